//! Method 2 of the notes: pickle/unpickle: the array sent by value with every task.
//!
//! (Being written: this demo reports an error until it is.)

/// Options of the demo.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Rows of the array.
    #[arg(long, default_value_t = 1000)]
    rows: usize,
    /// Columns of the array.
    #[arg(long, default_value_t = 1000)]
    cols: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    processes: usize,
}

/// Runs the demo.
pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::bail!("this demo is not written yet ({args:?})")
}
