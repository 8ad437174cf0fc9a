//! Tools for plugin authors (`recohost plugin ...`): [`new`] generates a plugin crate,
//! [`check`] runs a built `.wasm` through everything the server will ask of it.

pub mod check;
pub mod new;
