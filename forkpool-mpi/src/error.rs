//! What can go wrong, in the user's words: which rank, which item, why.

use crate::image::ImageId;

/// The error of a pool call, or of starting the pool.
///
/// # Examples
///
/// ```
/// use forkpool_mpi::Error;
///
/// let e = Error::Panicked { item: 3, rank: 2, message: "boom".into() };
/// assert_eq!(e.item(), Some(3));
/// assert!(e.to_string().contains("rank 2"));
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// MPI could not be started, or was started already.
    #[error("MPI: {0}")]
    Mpi(String),
    /// The executable could not be read to compute its [`ImageId`].
    #[error("reading the executable {path} to check that every rank runs it: {reason}")]
    Image {
        /// The file read.
        path: String,
        /// Why it failed.
        reason: String,
    },
    /// Some ranks run another binary than rank 0: functions cannot cross.
    #[error(
        "rank 0 runs the binary {ours}, but {} run another one ({}): every rank must run \
         the same executable, since functions travel as offsets into it. Build once and \
         launch that one file on every rank (copy it to every node, or put it on a \
         shared file system)",
        ranks_word(.differing),
        .differing.iter().map(|(r, id)| format!("rank {r}: {id}")).collect::<Vec<_>>().join(", ")
    )]
    NotSameBinary {
        /// Rank 0's id.
        ours: ImageId,
        /// The ranks that differ, and their ids.
        differing: Vec<(usize, ImageId)>,
    },
    /// The function lies outside the executable (in a shared library):
    /// its position differs from rank to rank.
    #[error(
        "the function at {address:#x} is not in the executable but in {}: only functions \
         of the program itself can be sent to other ranks (wrap the library call in a \
         function of yours)",
        .object.as_deref().unwrap_or("no loaded object")
    )]
    NotInExecutable {
        /// The function's address here.
        address: usize,
        /// The object (shared library) it is in, if any.
        object: Option<String>,
    },
    /// The function panicked on this item.
    #[error("item {item} panicked on rank {rank}: {message}")]
    Panicked {
        /// The item's index in the input.
        item: usize,
        /// The rank that ran it.
        rank: usize,
        /// The panic message.
        message: String,
    },
    /// An argument or a result would not encode.
    #[error("item {item}: the {what} of type {type_name} would not encode: {reason}")]
    Encode {
        /// The item's index in the input.
        item: usize,
        /// "argument" or "result".
        what: &'static str,
        /// The type.
        type_name: &'static str,
        /// postcard's reason.
        reason: String,
    },
    /// An argument or a result would not decode, or a message was
    /// malformed.
    #[error("item {item}: a message from rank {rank} would not decode: {reason}")]
    Decode {
        /// The item's index in the input.
        item: usize,
        /// The rank the message came from (0 for arguments decoded on a
        /// worker rank and reported back).
        rank: usize,
        /// What was wrong.
        reason: String,
    },
    /// The rank running this item died (killed by a signal, or exited).
    #[error(
        "item {item}: rank {rank} (pid {pid} on {host}) died while running it; its tasks \
         fail, the other ranks go on (this is seen only when mpirun runs with \
         --enable-recovery: by default mpirun ends the whole job when a rank dies)"
    )]
    RankDied {
        /// The item's index in the input.
        item: usize,
        /// The rank.
        rank: usize,
        /// Its pid.
        pid: i32,
        /// Its node.
        host: String,
    },
    /// No worker rank is left alive to run the item (every rank died, or
    /// the job was started with one rank, or the item must run on a node
    /// with no live worker).
    #[error("item {item}: no live worker rank can run it ({why})")]
    NoRank {
        /// The item's index in the input.
        item: usize,
        /// Why.
        why: String,
    },
    /// A node-shared array could not be made or used.
    #[error("node-shared array: {0}")]
    Array(String),
}

fn ranks_word(differing: &[(usize, ImageId)]) -> &'static str {
    if differing.len() == 1 {
        "one rank does"
    } else {
        "these ranks"
    }
}

impl Error {
    /// The index of the input item this error belongs to, if it belongs
    /// to one.
    pub fn item(&self) -> Option<usize> {
        match self {
            Error::Panicked { item, .. }
            | Error::Encode { item, .. }
            | Error::Decode { item, .. }
            | Error::RankDied { item, .. }
            | Error::NoRank { item, .. } => Some(*item),
            _ => None,
        }
    }

    /// The same error for another item of the same task.
    pub(crate) fn for_item(&self, i: usize) -> Error {
        let mut e = self.clone();
        match &mut e {
            Error::Panicked { item, .. }
            | Error::Encode { item, .. }
            | Error::Decode { item, .. }
            | Error::RankDied { item, .. }
            | Error::NoRank { item, .. } => *item = i,
            _ => {}
        }
        e
    }
}

/// The result of a pool call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_mismatch_names_the_ranks_and_what_to_do() {
        let ours = ImageId { len: 10, hash: 1 };
        let e = Error::NotSameBinary {
            ours,
            differing: vec![(2, ImageId { len: 11, hash: 5 })],
        };
        let s = e.to_string();
        assert!(s.contains("one rank does"), "{s}");
        assert!(s.contains("rank 2: 0000000000000005 (11 bytes)"), "{s}");
        assert!(s.contains("same executable"), "{s}");
    }

    #[test]
    fn for_item_moves_the_error_to_another_item() {
        let e = Error::RankDied {
            item: 1,
            rank: 3,
            pid: 77,
            host: "n1".into(),
        };
        assert_eq!(e.for_item(9).item(), Some(9));
        assert_eq!(Error::Mpi("x".into()).item(), None);
    }
}
