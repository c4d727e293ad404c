//! The built-in stage kinds, one module each; registered in [`crate::stage::KINDS`].

pub mod command;
