//! Prints the Python with numpy that the workspace's numpy checks use,
//! setting it up first if needed (see the library's docs); exits 1 with
//! what to install if there is none.

fn main() {
    match numpy_env::python() {
        Ok(python) => println!("{}", python.describe()),
        Err(e) => {
            eprintln!("numpy-env: {e}");
            std::process::exit(1);
        }
    }
}
