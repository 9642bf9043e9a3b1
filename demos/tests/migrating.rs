//! The book's "Migrating from Python" program runs and checks its result.

#[allow(unreachable_pub)]
#[path = "../examples/migrating.rs"]
mod migrating;

#[test]
fn migrating_chapter_example_fills_the_parents_array_from_the_workers() {
    migrating::main().expect("the migrating example runs");
}
