#[test]
fn smoke() {
    let pool = forkpool::Pool::new(2).unwrap();
    eprintln!("pids {:?} zygote {}", pool.worker_pids(), pool.zygote_pid());
    let out = pool.map(|x: u64| x * 2, 0..10).unwrap();
    assert_eq!(out, (0..10).map(|x| x * 2).collect::<Vec<_>>());
    let r = pool.apply(|x: u64| x + 1, 41).unwrap();
    assert_eq!(r, 42);
    let e = pool.map(|x: u32| if x == 3 { panic!("three") } else { x }, 0..8).unwrap_err();
    eprintln!("{e}");
    drop(pool);
}
