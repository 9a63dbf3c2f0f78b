//! A model of the cut against concurrent write guards, checked over every
//! interleaving (docs/ARCHITECTURE.md, "A cut is one instant").
//!
//! The model has the steps of `source::cow` and `tracker::bitmap` as
//! atomic actions under sequential consistency: a write's guard looks at
//! the cycle's flag and, when set, takes the cycle's lock and saves the
//! old content of frozen blocks not yet read; the write; the mark (a load
//! of the leaf word, a `fetch_or` of it, and the climb to the summary when
//! the word was zero). The cut takes the lock, swaps the summary word and
//! then each leaf word it points at; the cycle then reads its frozen
//! blocks in order, each under the lock (a saved copy first).
//!
//! Writer A writes block 0 (its write 1) and then block 1 (write 2);
//! writer B writes block 2 (write 3) once A's write 1 completed. Blocks 1
//! and 2 were written and marked before the cut. A point that holds write
//! 2 or write 3 without write 1 is not one instant. The model also checks
//! that nothing is lost: a block whose final content is not in the point
//! is marked for the next cycle.
//!
//! The protocol blockrep uses (the flag raised under the lock before the
//! take) passes; the two orders it replaced, the flag raised after the
//! take, and the flag raised first without holding the lock over the take,
//! each have an interleaving the model finds.

use std::collections::HashSet;

const BLOCKS: usize = 3;

/// The order of the cut's steps.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Protocol {
    /// Lock, raise the flag, take, record the frozen set, unlock (blockrep's).
    FlagFirstUnderLock,
    /// Lock, take, record the frozen set, raise the flag, unlock (the
    /// defect of issue 26).
    TakeBeforeFlag,
    /// Raise the flag, take, then lock to record the frozen set.
    LockAfterTake,
}

/// The steps of one write of one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum WriteStep {
    LoadFlag,
    Lock,
    Save,
    Write,
    PreCheck,
    FetchOr,
    Climb,
    Done,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct State {
    leaf: [bool; BLOCKS],
    summary: [bool; BLOCKS],
    flag: bool,
    /// Who holds the cycle's lock: 0 A, 1 B, 2 the cutter.
    lock: Option<u8>,
    /// Which write each block holds (9: written before the cut).
    disk: [u8; BLOCKS],
    /// The frozen set as the cycle's state holds it (what guards see).
    frozen: [bool; BLOCKS],
    /// Frozen blocks below this one are read.
    next: usize,
    saved: [Option<u8>; BLOCKS],
    point: [Option<u8>; BLOCKS],
    /// Writer A: which of its two writes, and the step.
    a: (u8, WriteStep),
    b: WriteStep,
    /// The cutter's program counter, the summary bits it swapped, the
    /// blocks its take found and how far it went.
    cut_pc: u8,
    swapped: [bool; BLOCKS],
    took: [bool; BLOCKS],
    taken: usize,
}

impl State {
    fn start() -> Self {
        State {
            leaf: [false, true, true],
            summary: [false, true, true],
            flag: false,
            lock: None,
            disk: [0, 9, 9],
            frozen: [false; BLOCKS],
            next: 0,
            saved: [None; BLOCKS],
            point: [None; BLOCKS],
            a: (1, WriteStep::LoadFlag),
            b: WriteStep::LoadFlag,
            cut_pc: 0,
            swapped: [false; BLOCKS],
            took: [false; BLOCKS],
            taken: 0,
        }
    }
}

/// One step of a write of `write` to `block` by thread `me`; `None` when
/// the step cannot run now (the lock is held).
fn write_step(
    s: &mut State,
    me: u8,
    block: usize,
    write: u8,
    step: WriteStep,
) -> Option<WriteStep> {
    use WriteStep::*;
    Some(match step {
        LoadFlag => {
            if s.flag {
                Lock
            } else {
                Write
            }
        }
        Lock => {
            if s.lock.is_some() {
                return None;
            }
            s.lock = Some(me);
            Save
        }
        Save => {
            if s.frozen[block] && block >= s.next && s.saved[block].is_none() {
                s.saved[block] = Some(s.disk[block]);
            }
            s.lock = None;
            Write
        }
        Write => {
            s.disk[block] = write;
            PreCheck
        }
        PreCheck => {
            if s.leaf[block] {
                Done
            } else {
                FetchOr
            }
        }
        FetchOr => {
            let was = s.leaf[block];
            s.leaf[block] = true;
            if was {
                Done
            } else {
                Climb
            }
        }
        Climb => {
            s.summary[block] = true;
            Done
        }
        Done => unreachable!("a finished write takes no step"),
    })
}

/// The cutter's next step under `p`; `None` when it must wait or is done.
fn cut_step(s: &mut State, p: Protocol) -> Option<()> {
    // The programs, as a list of named actions.
    #[derive(Clone, Copy)]
    enum A {
        Lock,
        Flag,
        SwapSummary,
        SwapLeaves,
        Record,
        Unlock,
        Fill,
    }
    let prog: &[A] = match p {
        Protocol::FlagFirstUnderLock => &[
            A::Lock,
            A::Flag,
            A::SwapSummary,
            A::SwapLeaves,
            A::Record,
            A::Unlock,
            A::Fill,
        ],
        Protocol::TakeBeforeFlag => &[
            A::Lock,
            A::SwapSummary,
            A::SwapLeaves,
            A::Record,
            A::Flag,
            A::Unlock,
            A::Fill,
        ],
        Protocol::LockAfterTake => &[
            A::Flag,
            A::SwapSummary,
            A::SwapLeaves,
            A::Lock,
            A::Record,
            A::Unlock,
            A::Fill,
        ],
    };
    let action = *prog.get(s.cut_pc as usize)?;
    match action {
        A::Lock => {
            if s.lock.is_some() {
                return None;
            }
            s.lock = Some(2);
        }
        A::Flag => s.flag = true,
        A::SwapSummary => {
            s.swapped = s.summary;
            s.summary = [false; BLOCKS];
        }
        A::SwapLeaves => {
            // One leaf word per step, in order.
            if let Some(b) = (s.taken..BLOCKS).find(|&b| s.swapped[b]) {
                s.took[b] = s.leaf[b];
                s.leaf[b] = false;
                s.taken = b + 1;
                return Some(());
            }
        }
        // The frozen set becomes the cycle's: nothing read, nothing saved.
        A::Record => {
            s.frozen = s.took;
            s.next = 0;
            s.saved = [None; BLOCKS];
        }
        A::Unlock => s.lock = None,
        A::Fill => {
            // One block per step, each under the lock.
            if s.lock.is_some() {
                return None;
            }
            if let Some(b) = (s.next..BLOCKS).find(|&b| s.frozen[b]) {
                s.point[b] = Some(s.saved[b].take().unwrap_or(s.disk[b]));
                s.next = b + 1;
                return Some(());
            }
            s.next = BLOCKS;
        }
    }
    s.cut_pc += 1;
    Some(())
}

/// Every state one step from `s`.
fn successors(s: &State, p: Protocol) -> Vec<State> {
    let mut out = Vec::new();
    if s.a != (2, WriteStep::Done) {
        let mut n = s.clone();
        let (mut write, mut step) = n.a;
        if step == WriteStep::Done {
            // Write 1 completed: write 2 begins.
            (write, step) = (2, WriteStep::LoadFlag);
        }
        if let Some(next) = write_step(&mut n, 0, usize::from(write - 1), write, step) {
            n.a = (write, next);
            out.push(n);
        }
    }
    let a_wrote_1 = s.a.0 == 2 || s.a.1 == WriteStep::Done;
    if s.b != WriteStep::Done && a_wrote_1 {
        let mut n = s.clone();
        if let Some(next) = write_step(&mut n, 1, 2, 3, s.b) {
            n.b = next;
            out.push(n);
        }
    }
    let mut n = s.clone();
    if cut_step(&mut n, p).is_some() {
        out.push(n);
    }
    out
}

/// What is wrong with a final state, if anything.
fn violation(s: &State) -> Option<String> {
    // Blocks the cycle did not read keep the replica's content (0).
    let point: Vec<u8> = (0..BLOCKS)
        .map(|b| if s.frozen[b] { s.point[b].unwrap() } else { 0 })
        .collect();
    if point[1] == 2 && point[0] != 1 {
        return Some(format!("A's write 2 without its write 1: {point:?}"));
    }
    if point[2] == 3 && point[0] != 1 {
        return Some(format!(
            "B's write 3 without A's write 1 before it: {point:?}"
        ));
    }
    for b in 0..BLOCKS {
        if s.disk[b] != point[b] && !s.leaf[b] {
            return Some(format!(
                "block {b} lost: disk {:?}, point {point:?}",
                s.disk
            ));
        }
    }
    None
}

/// Explores every interleaving from the start; the states visited and the
/// first violation found.
fn explore(p: Protocol) -> (usize, Option<String>) {
    let mut seen = HashSet::new();
    let mut stack = vec![State::start()];
    while let Some(s) = stack.pop() {
        if !seen.insert(s.clone()) {
            continue;
        }
        let next = successors(&s, p);
        if next.is_empty() {
            assert!(
                s.a == (2, WriteStep::Done) && s.b == WriteStep::Done && s.lock.is_none(),
                "{p:?}: a deadlock"
            );
            if let Some(v) = violation(&s) {
                return (seen.len(), Some(v));
            }
        }
        stack.extend(next);
    }
    (seen.len(), None)
}

#[test]
fn the_flag_raised_under_the_lock_before_the_take_makes_every_point_one_instant() {
    let (states, v) = explore(Protocol::FlagFirstUnderLock);
    assert_eq!(v, None);
    assert!(
        states > 1000,
        "only {states} states: the model explores too little"
    );
}

#[test]
fn the_flag_raised_after_the_take_lets_a_later_write_in_without_an_earlier_one() {
    let (_, v) = explore(Protocol::TakeBeforeFlag);
    let v = v.expect("the model must find the defect of issue 26");
    assert!(v.contains("without"), "{v}");
}

#[test]
fn the_flag_raised_without_the_lock_over_the_take_is_not_enough() {
    let (_, v) = explore(Protocol::LockAfterTake);
    assert!(v
        .expect("a guard can save before the frozen set is known")
        .contains("without"));
}
