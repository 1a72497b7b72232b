//! nines-jepsen: a Jepsen-style chaos harness for nines.

mod checker;
mod history;

fn main() {}
