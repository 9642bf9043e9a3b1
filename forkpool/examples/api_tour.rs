//! Every call of the pool, one after the other, each checked. The book's
//! "Pool API" chapter shows these pieces beside their Python counterparts.
//!
//! Run: `cargo run --release -p forkpool --example api_tour`.

use std::sync::OnceLock;
use std::time::Duration;

use forkpool::{Error, Pool};

fn square(x: u64) -> u64 {
    x * x
}

fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(10 * (5 - x.min(5))));
    x * x
}

// ANCHOR: initializer_fn
/// What each worker loads once, in its initializer.
static MODEL: OnceLock<Vec<f64>> = OnceLock::new();

fn predict(x: f64) -> f64 {
    let weights = MODEL.get().expect("set by the initializer");
    weights.iter().map(|w| w * x).sum()
}
// ANCHOR_END: initializer_fn

fn main() -> Result<(), Error> {
    // ANCHOR: new
    let pool = Pool::new(2)?; // multiprocessing.Pool(2)
    // ANCHOR_END: new

    // ANCHOR: map
    let squares = pool.map(square, 0..10)?; // pool.map(square, range(10))
    assert_eq!(squares, [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]);
    // ANCHOR_END: map

    // ANCHOR: borrowed
    fn str_len(s: String) -> usize {
        s.len()
    }
    let words: Vec<String> = ["to", "be", "or", "not"].map(String::from).to_vec();
    let lens = pool.map(str_len, &words)?; // borrowed: encoded in place, not cloned
    assert_eq!(lens, [2, 2, 2, 3]);
    assert_eq!(pool.apply(str_len, &words[3])?, 3);
    // ANCHOR_END: borrowed

    // ANCHOR: map_chunked
    let squares = pool.map_chunked(square, 0..10_000, 500)?; // pool.map(square, it, chunksize=500)
    assert_eq!(squares[100], 10_000);
    // ANCHOR_END: map_chunked

    // ANCHOR: imap
    for (i, sq) in pool.imap(slow_square, 0..5, 1).enumerate() {
        assert_eq!(sq?, (i * i) as u64); // in input order, as they come
    }
    // ANCHOR_END: imap

    // ANCHOR: imap_unordered
    let mut done: Vec<u64> = pool
        .imap_unordered(slow_square, 0..5, 1)
        .collect::<Result<_, _>>()?; // in completion order
    done.sort();
    assert_eq!(done, [0, 1, 4, 9, 16]);
    // ANCHOR_END: imap_unordered

    // ANCHOR: imap_auto
    let total: u64 = pool.imap_auto(square, 0..10_000).sum::<Result<u64, _>>()?; // pool.imap(square, it)
    assert_eq!(total, (0..10_000u64).map(square).sum::<u64>());
    // ANCHOR_END: imap_auto

    // ANCHOR: apply
    assert_eq!(pool.apply(square, 12)?, 144); // pool.apply(square, (12,))
    // ANCHOR_END: apply

    // ANCHOR: apply_async
    let mut handle = pool.apply_async(slow_square, 0); // pool.apply_async(f, (0,))
    assert!(!handle.ready());
    match handle.get_timeout(Duration::from_millis(1)) {
        Err(Error::Timeout { .. }) => {} // still running: ask again later
        other => panic!("{other:?}"),
    }
    assert_eq!(handle.get_timeout(Duration::from_secs(10))?, 0);
    // ANCHOR_END: apply_async

    // ANCHOR: cancel
    let mut handle = pool.map_async_chunked(slow_square, vec![4; 100], 1);
    assert!(handle.cancel()); // future.cancel(): queued tasks are dropped
    assert!(matches!(handle.get(), Err(Error::Cancelled { .. })));
    pool.apply_async(square, 3).detach(); // runs to the end, result unwanted
    // ANCHOR_END: cancel

    // ANCHOR: map_async
    let handle = pool.map_async(square, 0..100); // pool.map_async(square, range(100))
    let squares = handle.get()?; // .get()
    assert_eq!(squares[99], 9801);
    // ANCHOR_END: map_async

    // ANCHOR: starmap
    fn power(base: u64, exp: u32) -> u64 {
        base.pow(exp)
    }
    let powers = pool.starmap(power, [(2, 10), (3, 4)])?; // pool.starmap(pow, [(2, 10), (3, 4)])
    assert_eq!(powers, [1024, 81]);
    // ANCHOR_END: starmap

    // ANCHOR: map_with
    // pool.map(functools.partial(lookup, table), items): the table is made
    // after the pool started, and each worker reads it once per call.
    fn lookup(table: &[u64], i: usize) -> u64 {
        table[i]
    }
    let table: Vec<u64> = (0..1000).map(|x| x * 3).collect();
    let out = pool.map_with(table.as_slice(), lookup, [1, 10, 999])?;
    assert_eq!(out, [3, 30, 2997]);
    assert_eq!(pool.apply_with(&table[..], lookup, 7)?, 21);
    let mut lazily = pool.imap_with(table.as_slice(), lookup, [2, 4], 1)?;
    assert_eq!(lazily.next().transpose()?, Some(6));
    // ANCHOR_END: map_with

    // ANCHOR: context
    // mpire's shared_objects: one Context for any call, across calls
    let table = forkpool::Context::new(table)?;
    let squares: Vec<u64> = pool
        .imap(
            |(t, i): (forkpool::Context<Vec<u64>>, usize)| t[i] * t[i],
            (0..3).map(|i| (table.clone(), i)),
            1,
        )
        .collect::<Result<_, _>>()?;
    assert_eq!(squares, [0, 9, 36]);
    // ANCHOR_END: context

    // ANCHOR: await
    // concurrent.futures / asyncio: await the handle under any executor
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let total = runtime.block_on(async {
        let one = pool.apply_async(square, 7); // loop.run_in_executor(pool, square, 7)
        let many = pool.map_async(square, 0..4);
        Ok::<_, Error>(one.await? + many.await?.iter().sum::<u64>())
    })?;
    assert_eq!(total, 49 + 14);
    // ANCHOR_END: await

    // ANCHOR: stream
    let mut squares = pool.imap_unordered(square, 0..100, 10); // feature "futures"
    let total = runtime.block_on(async {
        let mut total = 0;
        while let Some(sq) = std::future::poll_fn(|cx| {
            futures_core::Stream::poll_next(std::pin::Pin::new(&mut squares), cx)
        })
        .await
        {
            total += sq?;
        }
        Ok::<_, Error>(total)
    })?;
    assert_eq!(total, (0..100u64).map(square).sum::<u64>());
    // ANCHOR_END: stream

    // ANCHOR: progress
    // mpire's progress_bar=True, tqdm(pool.imap(...)): feature "progress"
    let squares = pool.progress("squares").map(square, 0..1000)?;
    assert_eq!(squares[999], 998_001);
    let mut total = 0;
    for sq in pool
        .progress("squares, as they come")
        .imap_unordered(square, 0..1000, 10)
    {
        total += sq?;
    }
    assert_eq!(total, (0..1000u64).map(square).sum::<u64>());
    // ANCHOR_END: progress

    // ANCHOR: errors
    let err = pool
        .map(|x: u32| if x == 3 { panic!("no threes") } else { x }, 0..5)
        .unwrap_err();
    assert_eq!(err.item(), Some(3)); // which input item failed
    assert!(err.to_string().contains("no threes"));
    let each: Vec<Result<u32, Error>> = pool
        .imap(
            |x: u32| if x == 3 { panic!("no threes") } else { x },
            0..5,
            1,
        )
        .collect();
    assert!(each[3].is_err() && each[4].is_ok()); // the others are unaffected
    // ANCHOR_END: errors

    // ANCHOR: stats
    let stats = pool.stats(); // (mpire's worker insights)
    for w in &stats.workers {
        println!(
            "worker {}: {} tasks, {} items, busy {:?}, peak RSS {} KiB",
            w.pid,
            w.tasks,
            w.items,
            w.busy,
            w.peak_rss >> 10
        );
    }
    assert_eq!(stats.workers.len(), 2);
    assert!(stats.tasks() > 0 && stats.peak_rss() > 0);
    // ANCHOR_END: stats

    // ANCHOR: close_join
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 2);
    pool.close(); // pool.close()
    pool.join()?; // pool.join()
    assert!(matches!(pool.map(square, [1]), Err(Error::Closed)));
    // ANCHOR_END: close_join

    // ANCHOR: builder
    let weights = vec![0.5, 0.25, 0.25];
    assert!(format!("{:?}", forkpool::PoolBuilder::default()).contains("processes: None"));
    let pool = Pool::builder()
        .processes(2) // processes=2
        .initializer(move || MODEL.set(weights.clone()).unwrap()) // initializer=..., initargs=...
        .max_tasks_per_child(100) // maxtasksperchild=100
        .build()?;
    assert_eq!(pool.apply(predict, 4.0)?, 4.0);
    // ANCHOR_END: builder

    // ANCHOR: terminate
    let running = pool.map_async(slow_square, 0..4);
    pool.terminate(); // pool.terminate(): kills the workers now
    assert!(matches!(running.get(), Err(Error::Terminated)));
    // ANCHOR_END: terminate
    println!("api_tour: every call checked");
    Ok(())
}
