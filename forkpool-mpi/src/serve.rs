//! The worker ranks: who is where, and the loop that serves rank 0.
//!
//! A worker rank waits for messages from rank 0 only: a task (run it, send
//! the result back with a blocking send, which rank 0 always answers), a
//! node-shared array to allocate (a collective call on the node), or the
//! stop (free the arrays, return from `Pool::world`). While it waits it
//! checks now and then that rank 0 is alive when it runs on the same node,
//! and returns an error if it is not, rather than waiting forever.

use std::time::{Duration, Instant};

use mpi::collective::SystemOperation;
use mpi::point_to_point::MatchedReceiveVec;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use serde::{Deserialize, Serialize};

use crate::array::{AllocRequest, Segment};
use crate::error::{Error, Result};
use crate::layout::{RankInfo, alive, host_name, node_numbers};
use crate::pool::Backoff;

/// Message tags.
pub(crate) mod tag {
    /// Rank 0 to a worker: a task.
    pub(crate) const TASK: i32 = 1;
    /// A worker to rank 0: a task's outcomes.
    pub(crate) const RESULT: i32 = 2;
    /// Rank 0 to a worker: stop serving.
    pub(crate) const STOP: i32 = 3;
    /// Rank 0 to a worker: join the allocation of a node-shared array.
    pub(crate) const ALLOC: i32 = 4;
}

/// How often a waiting worker checks that rank 0 is alive.
const LIVENESS_EVERY: Duration = Duration::from_millis(100);

/// What the stop carries: the arrays to free, and the nodes where a rank
/// died (there the collective free would hang: the arrays are left).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StopRequest {
    pub(crate) free: Vec<u64>,
    pub(crate) dead_nodes: Vec<usize>,
    /// Whether to finalize MPI (not when a rank died).
    pub(crate) finalize: bool,
}

/// How a worker's service ended.
pub(crate) struct Stopped {
    /// Whether to finalize MPI.
    pub(crate) finalize: bool,
}

/// Host name bytes exchanged per rank.
const HOST_BYTES: usize = 64;

/// Every rank's node, pid and host, known to every rank.
pub(crate) fn exchange_layout(
    world: &SimpleCommunicator,
    node_comm: &SimpleCommunicator,
) -> Vec<RankInfo> {
    let rank = world.rank() as u64;
    let mut leader = 0u64;
    node_comm.all_reduce_into(&rank, &mut leader, SystemOperation::min());
    let size = world.size() as usize;
    let mine = [leader, u64::from(std::process::id())];
    let mut all = vec![0u64; 2 * size];
    world.all_gather_into(&mine[..], &mut all[..]);
    let mut host = [0u8; HOST_BYTES];
    let name = host_name();
    let n = name.len().min(HOST_BYTES);
    host[..n].copy_from_slice(&name.as_bytes()[..n]);
    let mut hosts = vec![0u8; HOST_BYTES * size];
    world.all_gather_into(&host[..], &mut hosts[..]);
    let leaders: Vec<usize> = all.chunks(2).map(|c| c[0] as usize).collect();
    let nodes = node_numbers(&leaders);
    (0..size)
        .map(|r| {
            let h = &hosts[r * HOST_BYTES..(r + 1) * HOST_BYTES];
            let end = h.iter().position(|&b| b == 0).unwrap_or(HOST_BYTES);
            RankInfo {
                rank: r,
                node: nodes[r],
                pid: all[2 * r + 1] as i32,
                host: String::from_utf8_lossy(&h[..end]).into_owned(),
            }
        })
        .collect()
}

/// The loop of a worker rank: serves rank 0 until it says stop.
pub(crate) fn serve(
    world: &SimpleCommunicator,
    node_comm: &SimpleCommunicator,
    layout: &[RankInfo],
) -> Result<Stopped> {
    let me = world.rank() as usize;
    let my_node = layout[me].node;
    let root = world.process_at_rank(0);
    let root_local = layout[0].node == my_node;
    let mut idle = Backoff::new();
    let mut last_check = Instant::now();
    loop {
        let Some(probe) = root.immediate_matched_probe() else {
            if root_local && last_check.elapsed() >= LIVENESS_EVERY {
                last_check = Instant::now();
                if !alive(layout[0].pid) {
                    return Err(Error::Mpi(format!(
                        "rank {me}: rank 0 ({}) died; this rank stops serving",
                        layout[0]
                    )));
                }
            }
            idle.wait();
            continue;
        };
        idle.reset();
        let (message, status) = probe.matched_receive_vec::<u8>();
        match status.tag() {
            tag::TASK => {
                let started = Instant::now();
                // SAFETY: the message comes from rank 0, and `Pool::world`
                // checked that every rank runs this executable before any
                // rank served a task.
                let result = unsafe { crate::task::execute(&message) };
                match result {
                    Ok(mut out) => {
                        // The time the task took here, for rank 0's sizing
                        // of what a worker holds (see `pool::Core::depth`).
                        let nanos = started.elapsed().as_nanos().min(u64::MAX as u128) as u64;
                        out.extend_from_slice(&nanos.to_le_bytes());
                        root.send_with_tag(&out[..], tag::RESULT)
                    }
                    Err(e) => eprintln!("forkpool-mpi: rank {me} dropped a task: {e}"),
                }
            }
            tag::ALLOC => {
                let request: AllocRequest = postcard::from_bytes(&message)
                    .map_err(|e| Error::Mpi(format!("rank {me}: a bad allocation request: {e}")))?;
                if let Err(e) = Segment::allocate(node_comm, my_node, &request) {
                    eprintln!("forkpool-mpi: rank {me}: {e}");
                }
            }
            tag::STOP => {
                let stop: StopRequest = postcard::from_bytes(&message)
                    .map_err(|e| Error::Mpi(format!("rank {me}: a bad stop request: {e}")))?;
                free_arrays(node_comm, my_node, &stop);
                return Ok(Stopped {
                    finalize: stop.finalize,
                });
            }
            other => eprintln!("forkpool-mpi: rank {me} ignored a message with tag {other}"),
        }
    }
}

/// Frees the node-shared arrays `stop` lists, together with the other
/// ranks of this node (a collective call), unless a rank of this node died.
pub(crate) fn free_arrays(node_comm: &SimpleCommunicator, node: usize, stop: &StopRequest) {
    if stop.dead_nodes.contains(&node) {
        return;
    }
    for &id in &stop.free {
        Segment::free(node_comm, id);
    }
}
