//! Getting data in: MovieLens files and the generated demo dataset.

pub mod demo;
pub mod movielens;
pub mod read_ahead;
