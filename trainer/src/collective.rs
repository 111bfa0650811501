//! Collectives for data-parallel training: every rank contributes bytes and every rank gets every
//! rank's bytes, in rank order. The trainer sums what it gathers in shard order itself, so a
//! model trained on N ranks is the model trained on one rank that reads the same shards (with the
//! same number of gradient threads per rank: threads split a shard's rows and sum in their order).
//!
//! [`Local`] is one process (nothing to exchange); [`Mpi`] is OpenMPI through the `mpi` crate
//! (`mpirun -np N adrank train --distributed`): one `MPI_Allgather` of the sizes, then one
//! `MPI_Allgatherv` of the bytes per exchange.

use mpi::{
    datatype::PartitionMut,
    traits::{Communicator as _, CommunicatorCollectives as _},
};

/// A group of ranks training one model.
pub trait Collective: std::fmt::Debug {
    /// This rank, `0..size`.
    fn rank(&self) -> usize;
    /// How many ranks.
    fn size(&self) -> usize;
    /// Every rank's `mine`, in rank order (collective: every rank must call it).
    fn all_gather(&self, mine: &[u8]) -> Vec<Vec<u8>>;
}

/// One process.
#[derive(Debug, Default, Clone, Copy)]
pub struct Local;

impl Collective for Local {
    fn rank(&self) -> usize {
        0
    }

    fn size(&self) -> usize {
        1
    }

    fn all_gather(&self, mine: &[u8]) -> Vec<Vec<u8>> {
        vec![mine.to_vec()]
    }
}

/// The ranks `mpirun` started (MPI_COMM_WORLD); a process started without `mpirun` is a world
/// of one.
pub struct Mpi {
    // Dropping the universe finalises MPI: it lives as long as the trainer uses the world.
    _universe: mpi::environment::Universe,
    world: mpi::topology::SimpleCommunicator,
}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mpi").field("rank", &self.rank()).field("size", &self.size()).finish()
    }
}

impl Mpi {
    /// Initialises MPI (calls from any thread, one at a time); `None` when it was initialised
    /// before in this process.
    pub fn init() -> Option<Self> {
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Serialized)?;
        let world = universe.world();
        Some(Self { _universe: universe, world })
    }
}

impl Mpi {
    /// Ends every rank of the job (MPI_Abort): a rank that fails must not leave the others
    /// waiting in a collective it will never join.
    pub fn abort(&self, code: i32) -> ! {
        use mpi::traits::Communicator as _;
        self.world.abort(code)
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_gather(&self, mine: &[u8]) -> Vec<Vec<u8>> {
        // One leading byte per contribution: an empty Vec's dangling pointer is 0x1, which is
        // OpenMPI's MPI_IN_PLACE, so a send or receive buffer of nothing would read as that.
        let mut send = Vec::with_capacity(mine.len() + 1);
        send.push(1u8);
        send.extend_from_slice(mine);
        let size = self.size();
        let length = i32::try_from(send.len()).expect("one rank's contribution is above MPI's 2 GiB of counts");
        let mut lengths = vec![0i32; size];
        self.world.all_gather_into(&length, &mut lengths[..]);
        let displacements: Vec<i32> = lengths
            .iter()
            .scan(0i32, |offset, &n| {
                let at = *offset;
                *offset = offset.checked_add(n).expect("one exchange over all ranks is above MPI's 2 GiB of counts");
                Some(at)
            })
            .collect();
        let total: usize = lengths.iter().map(|&n| n as usize).sum();
        let mut all = vec![0u8; total];
        {
            let mut partition = PartitionMut::new(&mut all[..], &lengths[..], &displacements[..]);
            self.world.all_gather_varcount_into(&send[..], &mut partition);
        }
        lengths.iter().zip(&displacements).map(|(&n, &at)| all[at as usize + 1..(at + n) as usize].to_vec()).collect()
    }
}
