//! The focused load tools (`make bench-ingest`, `bench-delivery`, `bench-revalidator`):
//! one part of the system measured alone, quickly, with the arguments given —
//! `spool-bench ingest|delivery|revalidator [ARGS]`.

pub mod delivery;
pub mod ingest;
pub mod revalidator;
