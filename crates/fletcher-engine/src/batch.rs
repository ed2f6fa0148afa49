//! Grouping tokenized texts into ragged batches bounded in tokens.

/// Splits `order` (text indices, longest first) into consecutive groups whose
/// token counts sum to at most `max_tokens`; a text longer than the budget
/// forms a group of its own.
pub(crate) fn plan_batches(
    order: &[usize],
    lengths: &[usize],
    max_tokens: usize,
) -> Vec<Vec<usize>> {
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut tokens = 0;
    for &i in order {
        let len = lengths[i];
        if !current.is_empty() && tokens + len > max_tokens {
            batches.push(std::mem::take(&mut current));
            tokens = 0;
        }
        current.push(i);
        tokens += len;
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Indices of `lengths` sorted longest first; ties keep input order.
pub(crate) fn longest_first(lengths: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_budget_and_cover_every_text_once() {
        let lengths = [5, 300, 7, 7, 120, 1, 64, 64, 64];
        let order = longest_first(&lengths);
        assert_eq!(order[0], 1);
        let batches = plan_batches(&order, &lengths, 128);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        for b in &batches {
            let sum: usize = b.iter().map(|&i| lengths[i]).sum();
            assert!(b.len() == 1 || sum <= 128, "batch {b:?} has {sum} tokens");
        }
        assert_eq!(batches[0], vec![1]);
    }
}
