//! Progress bars on map-like calls (feature `progress`), with real workers.
//! Bars are hidden; the tests read their position and length.

mod common;

use common::TestPool;
use indicatif::{ProgressBar, ProgressDrawTarget};

fn double(x: u64) -> u64 {
    x * 2
}

fn hidden() -> ProgressBar {
    ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden())
}

#[test]
fn map_with_a_bar_counts_every_item_once_whatever_the_chunks() {
    let pool = TestPool::new(2);
    for chunksize in [1, 7, 100, 5000] {
        let bar = hidden();
        let out = pool
            .progress_bar(bar.clone())
            .map_chunked(double, 0..1000, chunksize)
            .unwrap();
        assert_eq!(out[999], 1998);
        assert_eq!(bar.length(), Some(1000), "chunksize {chunksize}");
        assert_eq!(bar.position(), 1000, "chunksize {chunksize}");
        assert!(bar.is_finished());
    }
    let bar = hidden();
    let out = pool.progress_bar(bar.clone()).map(double, 0..333).unwrap();
    assert_eq!((out.len(), bar.position()), (333, 333));
}

#[test]
fn map_async_bar_moves_as_results_arrive_and_awaits() {
    let pool = TestPool::new(2);
    let bar = hidden();
    let h = pool.progress_bar(bar.clone()).map_async(double, 0..500);
    assert_eq!(bar.length(), Some(500));
    let out = h.get().unwrap();
    assert_eq!((out.len(), bar.position()), (500, 500));
    assert!(bar.is_finished());
}

#[test]
fn starmap_with_a_bar() {
    let pool = TestPool::new(2);
    let bar = hidden();
    let out = pool
        .progress_bar(bar.clone())
        .starmap(|a: u64, b: u64| a * b, (0..50).map(|i| (i, i)))
        .unwrap();
    assert_eq!(out[49], 49 * 49);
    assert_eq!(bar.position(), 50);
}

#[test]
fn imap_bar_moves_one_step_per_item_consumed() {
    let pool = TestPool::new(2);
    let bar = hidden();
    let mut it = pool.progress_bar(bar.clone()).imap(double, 0..100, 4);
    assert_eq!(bar.length(), Some(100));
    for i in 0..10u64 {
        assert_eq!(it.next().unwrap().unwrap(), 2 * i);
        assert_eq!(bar.position(), i + 1);
    }
    let rest: Vec<u64> = it.by_ref().map(Result::unwrap).collect();
    assert_eq!(rest.len(), 90);
    assert_eq!(bar.position(), 100);
    assert!(bar.is_finished());
}

#[test]
fn imap_unordered_of_unknown_length_and_an_early_drop() {
    let pool = TestPool::new(2);
    let bar = hidden();
    {
        let it = pool.progress_bar(bar.clone()).imap_unordered(
            double,
            (0u64..).take_while(|&x| x < 1_000_000),
            1,
        );
        assert_eq!(bar.length(), None, "the input does not know its length");
        assert_eq!(it.take(25).count(), 25);
    }
    assert_eq!(bar.position(), 25);
    assert!(bar.is_finished(), "an abandoned bar is finished too");
}

#[test]
fn a_failing_map_still_counts_the_items_that_ran() {
    let pool = TestPool::new(2);
    let bar = hidden();
    let err = pool
        .progress_bar(bar.clone())
        .map(|x: u32| if x == 5 { panic!("five") } else { x }, 0..10)
        .unwrap_err();
    assert_eq!(err.item(), Some(5));
    assert_eq!(bar.position(), 10, "every item ran and was counted");
}

#[test]
fn map_with_and_imap_auto_with_a_bar() {
    let pool = TestPool::new(2);
    let bar = hidden();
    let table: Vec<u64> = (0..100).collect();
    let out = pool
        .progress_bar(bar.clone())
        .map_with(table.as_slice(), |t: &[u64], i: usize| t[i] * 2, 0..100)
        .unwrap();
    assert_eq!(out[99], 198);
    assert_eq!((bar.length(), bar.position()), (Some(100), 100));
    let bar = hidden();
    let n = pool
        .progress_bar(bar.clone())
        .imap_unordered_auto(double, 0..500)
        .count();
    assert_eq!((n as u64, bar.position()), (500, 500));
    let bar = hidden();
    let got: Vec<u64> = pool
        .progress_bar(bar.clone())
        .imap_auto(double, 0..50)
        .map(Result::unwrap)
        .collect();
    assert_eq!((got[49], bar.position()), (98, 50));
}
