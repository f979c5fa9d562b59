#![no_std]
// The programs live in main.rs; this library target exists so that
// watchdog/build.rs can declare a build-dependency on this crate.
