pub mod csaf;
pub mod csaf_checks;
pub mod csaf_provider;
pub mod kev;
pub mod nvd;
pub mod rss;
pub mod xmlfeed;
