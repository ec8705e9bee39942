pub mod csaf;
pub mod kev;
pub mod nvd;
pub mod rss;
