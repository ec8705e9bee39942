pub mod csaf;
pub mod nvd;
pub mod rss;
