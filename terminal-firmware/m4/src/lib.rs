//! Pieces shared by the image and the size probe: the assembly P-256 backend and the measurement
//! of instructions and stack.
#![no_std]

pub mod backend;
pub mod measure;
