//! Fork-join over an index range on scoped threads, results in index order: the one way
//! asterflow splits CPU work (tree histograms, bootstrap paths, the logistic objective's row
//! chunks). Whatever the thread count, `f(i)` is computed for each `i` exactly once and the
//! results come back in order, so a caller that adds them up in that order gets the same sums
//! on any number of cores.

/// `f(i)` for `i in 0..count`, on up to `threads` threads (contiguous ranges of indices each),
/// in index order. A panic in `f` is re-raised on the caller's thread.
pub fn map<T: Send>(count: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = threads.clamp(1, count.max(1));
    if threads == 1 {
        return (0..count).map(f).collect();
    }
    let per = count.div_ceil(threads);
    let mut slots: Vec<Option<T>> = (0..count).map(|_| None).collect();
    std::thread::scope(|scope| {
        let f = &f;
        let workers: Vec<_> = slots
            .chunks_mut(per)
            .enumerate()
            .map(|(chunk, slots)| {
                scope.spawn(move || {
                    for (offset, slot) in slots.iter_mut().enumerate() {
                        *slot = Some(f(chunk * per + offset));
                    }
                })
            })
            .collect();
        for worker in workers {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
    slots
        .into_iter()
        .map(|slot| slot.expect("every index is computed"))
        .collect()
}

/// `f(i, piece)` for each `i`-th `size`-long piece of `data` (the last may be shorter), on up
/// to `threads` threads as [`map`] splits indices, results in piece order.
pub fn map_chunks<T: Send, R: Send>(
    data: &mut [T],
    size: usize,
    threads: usize,
    f: impl Fn(usize, &mut [T]) -> R + Sync,
) -> Vec<R> {
    // Each piece behind its own lock, so a shared `Fn` can take it mutably: one taker each.
    let pieces: Vec<std::sync::Mutex<&mut [T]>> = data
        .chunks_mut(size.max(1))
        .map(std::sync::Mutex::new)
        .collect();
    map(pieces.len(), threads, |i| {
        f(i, &mut pieces[i].lock().expect("each piece is taken once"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_once_in_order_on_any_thread_count() {
        for threads in [0, 1, 2, 3, 7, 50] {
            assert_eq!(
                map(10, threads, |i| i * i),
                (0..10).map(|i| i * i).collect::<Vec<_>>()
            );
        }
        assert!(map(0, 4, |i| i).is_empty());
    }

    #[test]
    fn every_piece_once_in_order_on_any_thread_count() {
        for threads in [1, 2, 3, 7] {
            let mut data: Vec<usize> = (0..10).collect();
            let sums = map_chunks(&mut data, 3, threads, |i, piece| {
                piece.iter_mut().for_each(|v| *v += 100 * i);
                piece.iter().sum::<usize>()
            });
            assert_eq!(sums, [3, 312, 621, 309]);
            assert_eq!(data[3..6], [103, 104, 105]);
        }
    }
}
