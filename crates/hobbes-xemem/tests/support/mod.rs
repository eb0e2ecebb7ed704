pub mod cbuild;
pub mod daemon;
