//! Where the ranks are: which node each runs on, its pid, and how the rows
//! of a node-shared array are split over the nodes.

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// One rank of the job.
///
/// # Examples
///
/// ```
/// let r = forkpool_mpi::RankInfo { rank: 1, node: 0, pid: 4242, host: "n01".into() };
/// assert_eq!(r.to_string(), "rank 1 (pid 4242 on n01)");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankInfo {
    /// Its rank in `MPI_COMM_WORLD`.
    pub rank: usize,
    /// The index of its node (ranks that share memory share a node), in
    /// the order of the nodes' lowest ranks: rank 0's node is node 0.
    pub node: usize,
    /// Its process id on its node.
    pub pid: i32,
    /// Its node's host name.
    pub host: String,
}

impl std::fmt::Display for RankInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rank {} (pid {} on {})", self.rank, self.pid, self.host)
    }
}

/// The node of each rank, given the lowest world rank on each rank's node
/// (`leaders[r]`): nodes are numbered in the order of their lowest rank.
pub(crate) fn node_numbers(leaders: &[usize]) -> Vec<usize> {
    let mut seen: Vec<usize> = leaders.to_vec();
    seen.sort_unstable();
    seen.dedup();
    leaders
        .iter()
        .map(|l| seen.binary_search(l).expect("every leader is in the list"))
        .collect()
}

/// Splits `rows` into one contiguous block per node, in node order, sized
/// in proportion to `weights` (the worker ranks on each node): the nodes
/// with more workers hold more rows. Blocks differ from their exact share
/// by less than one row. With no weight at all every row goes to node 0.
pub(crate) fn split_rows(rows: usize, weights: &[usize]) -> Vec<Range<usize>> {
    let total: usize = weights.iter().sum();
    if total == 0 {
        return (0..weights.len())
            .map(|i| if i == 0 { 0..rows } else { rows..rows })
            .collect();
    }
    let mut acc = 0usize;
    weights
        .iter()
        .map(|&w| {
            let start = (rows as u128 * acc as u128 / total as u128) as usize;
            acc += w;
            let end = (rows as u128 * acc as u128 / total as u128) as usize;
            start..end
        })
        .collect()
}

/// Whether process `pid` on this node is alive: it exists and is not a
/// zombie (a process that died but was not reaped yet is dead for us).
pub(crate) fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the command name in parens
        // (which may itself hold spaces and parens: take the last ')').
        Ok(stat) => match stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
        {
            Some(state) => !matches!(state, "Z" | "X" | "x"),
            None => true,
        },
        Err(_) => false,
    }
}

/// This node's host name.
pub(crate) fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for writes of its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown-host".to_owned();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    #[test]
    fn nodes_are_numbered_by_their_lowest_rank() {
        assert_eq!(node_numbers(&[0, 0, 2, 2, 0]), [0, 0, 1, 1, 0]);
        assert_eq!(node_numbers(&[0, 1, 2]), [0, 1, 2]);
    }

    #[test]
    fn rows_split_by_workers_cover_every_row_once() {
        for rows in [0, 1, 7, 2000, 10_000] {
            for weights in [vec![3], vec![1, 2], vec![0, 4, 4], vec![2, 0, 1, 5]] {
                let blocks = split_rows(rows, &weights);
                assert_eq!(blocks.len(), weights.len());
                let mut next = 0;
                for (b, &w) in blocks.iter().zip(&weights) {
                    assert_eq!(b.start, next);
                    next = b.end;
                    if w == 0 {
                        assert!(b.is_empty(), "{rows} {weights:?} {blocks:?}");
                    }
                }
                assert_eq!(next, rows);
            }
        }
        // In proportion: 3 workers on node 0, 4 on node 1.
        assert_eq!(split_rows(700, &[3, 4]), [0..300, 300..700]);
    }

    #[test]
    fn with_no_workers_every_row_stays_on_node_zero() {
        assert_eq!(split_rows(10, &[0, 0]), [0..10, 10..10]);
    }

    #[test]
    fn a_live_process_is_alive_and_a_dead_or_zombie_one_is_not() {
        assert!(alive(std::process::id() as i32));
        let mut child = Command::new("sleep")
            .arg("30")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(alive(pid));
        child.kill().unwrap();
        // Killed but not reaped: a zombie, dead for us.
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) {
            assert!(
                Instant::now() < deadline,
                "pid {pid} still alive after SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        child.wait().unwrap();
        assert!(!alive(pid));
    }

    #[test]
    fn the_host_name_is_not_empty() {
        assert!(!host_name().is_empty());
    }
}
