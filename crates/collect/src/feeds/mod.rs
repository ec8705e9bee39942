pub mod csaf;
pub mod rss;
