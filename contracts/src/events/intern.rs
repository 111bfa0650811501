//! Sharing of decoded feature names and categorical values. Every impression logs the same
//! couple of dozen names and a handful of recurring categories; decoding each into its own
//! allocation was most of the decoder's allocations (the ingester's profile had `malloc` and
//! `free` under the JSON decode, which is ~40% of its CPU).
//!
//! Names are interned for the life of the process, but only a bounded number of them (names
//! come from input, and a stream of made-up names must not grow memory without end): past the
//! bound a name is allocated as before. Values go through a small per-thread cache of shared
//! strings, replaced as others come, so high-cardinality values (ids) cost one lookup more and
//! hold nothing for long.

use std::{
    borrow::Cow,
    cell::RefCell,
    hash::BuildHasher,
    sync::{Arc, Mutex},
};

use rustc_hash::{FxBuildHasher, FxHashSet};

/// The most names the process interns, and the longest: at most 64 KiB held for good.
const MAX_NAMES: usize = 1_024;
const MAX_NAME_BYTES: usize = 64;

/// Slots in each thread's value cache (a power of two).
const VALUE_SLOTS: usize = 1_024;

/// The process's interned names.
static NAMES: Mutex<Option<FxHashSet<&'static str>>> = Mutex::new(None);

/// Positions in a record whose last name each thread remembers.
const REMEMBERED_POSITIONS: usize = 64;

/// A thread's view of the interned names.
#[derive(Default)]
struct LocalNames {
    /// The names this thread has met, from [`NAMES`]: looked up without a lock.
    known: FxHashSet<&'static str>,
    /// By position in a record, the name the last record had there.
    last: Vec<&'static str>,
}

thread_local! {
    static LOCAL_NAMES: RefCell<LocalNames> = RefCell::default();
    /// Recent values by hash, one per slot.
    static VALUES: RefCell<Vec<Option<Arc<str>>>> = RefCell::new(vec![None; VALUE_SLOTS]);
}

/// A feature name as decoded, the `position`th of its record: the interned copy when there is
/// one. Records of a kind name the same features in the same order, so most names are the one
/// the last record had at that position, found by one comparison instead of a hash lookup.
pub(crate) fn name(position: usize, text: &str) -> Cow<'static, str> {
    LOCAL_NAMES.with_borrow_mut(|names| {
        if let Some(&held) = names.last.get(position).filter(|held| **held == text) {
            return Cow::Borrowed(held);
        }
        let held = match names.known.get(text) {
            Some(&held) => held,
            None => match global_name(text) {
                Some(held) => {
                    names.known.insert(held);
                    held
                }
                None => return Cow::Owned(text.to_owned()),
            },
        };
        if position < REMEMBERED_POSITIONS {
            if names.last.len() <= position {
                names.last.resize(position + 1, "");
            }
            names.last[position] = held;
        }
        Cow::Borrowed(held)
    })
}

/// The process's copy of `text`, made now if the bound allows.
fn global_name(text: &str) -> Option<&'static str> {
    let mut names = NAMES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let names = names.get_or_insert_with(FxHashSet::default);
    if let Some(held) = names.get(text) {
        return Some(held);
    }
    if names.len() >= MAX_NAMES || text.len() > MAX_NAME_BYTES {
        return None;
    }
    // Bounded above: at most MAX_NAMES names of MAX_NAME_BYTES, held for the process's life.
    let held: &'static str = Box::leak(text.into());
    names.insert(held);
    Some(held)
}

/// A categorical value as decoded: shared with the last equal value this thread decoded into
/// the same slot.
pub(crate) fn value(text: &str) -> Arc<str> {
    let slot = FxBuildHasher.hash_one(text) as usize & (VALUE_SLOTS - 1);
    VALUES.with_borrow_mut(|values| match &values[slot] {
        Some(held) if **held == *text => Arc::clone(held),
        _ => {
            let fresh: Arc<str> = text.into();
            values[slot] = Some(Arc::clone(&fresh));
            fresh
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_shared_up_to_the_bound() {
        let (a, b) = (name(0, "intern_test_name"), name(0, "intern_test_name"));
        assert!(matches!((&a, &b), (Cow::Borrowed(x), Cow::Borrowed(y)) if std::ptr::eq(*x, *y)));
        // At another position, and after another name took this one's: the same copy.
        assert_eq!(name(0, "intern_other_name"), "intern_other_name");
        for position in [0, 1, 100] {
            assert!(matches!(name(position, "intern_test_name"), Cow::Borrowed(x) if std::ptr::eq(x, a.as_ref())));
        }
        // Too long to hold for good: owned, equal all the same.
        let long = "n".repeat(MAX_NAME_BYTES + 1);
        assert!(matches!(name(0, &long), Cow::Owned(s) if s == long));
        // Another thread finds the same copy.
        let there = std::thread::spawn(|| name(0, "intern_test_name")).join().unwrap();
        assert!(matches!((&a, &there), (Cow::Borrowed(x), Cow::Borrowed(y)) if std::ptr::eq(*x, *y)));
    }

    #[test]
    fn values_are_shared_while_their_slot_holds_them() {
        let (a, b) = (value("ios"), value("ios"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*value("android"), "android");
        // Whatever displaces what: every value reads back as itself.
        for i in 0..3 * VALUE_SLOTS {
            let text = format!("user-{i}");
            assert_eq!(&*value(&text), text);
        }
    }
}
