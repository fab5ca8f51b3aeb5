"""The shared training loop (tissuemap.training): minibatch epochs visit every item once, a diverging loss stops
training with the model's message, and early stopping ends at a fixed epoch."""

import pytest
import torch

from tissuemap.early_stopping import EARLY_STOPPING_EVERY, EarlyStopping
from tissuemap.errors import InputError
from tissuemap.training import FullDataSteps, MinibatchEpochs, TrainingLoop, train

CPU = torch.device("cpu")


def loop_over(epochs, total: int, **options) -> TrainingLoop:
    return TrainingLoop(name="test", unit="epoch", total=total, run_epoch=epochs.run, losses=epochs.losses,
                        diverged=lambda epoch: f"diverged at epoch {epoch}", state=lambda done: {"step": done},
                        device=CPU, progress=False, **options)


def test_minibatch_epochs_visit_every_item_once_in_a_seeded_order():
    visited = []

    def step(item_ids):
        visited.append(item_ids.clone())
        return item_ids.double().sum().float()

    epochs = MinibatchEpochs(n_items=10, batch_size=4, total=3, seed=5, device=CPU, step=step)
    run = train(loop_over(epochs, 3))
    assert run.done == 3 and run.stopped_at is None and [len(ids) for ids in visited] == [4, 4, 2] * 3
    orders = [torch.cat(visited[3 * epoch: 3 * epoch + 3]) for epoch in range(3)]
    assert all(sorted(order.tolist()) == list(range(10)) for order in orders)
    assert not torch.equal(orders[0], orders[1])  # a new order each epoch
    # the epoch's loss is the mean of its minibatches' (the ids of an epoch add up to 45, over 3 minibatches)
    torch.testing.assert_close(epochs.losses(3), torch.full((3,), 15.0))
    again = []
    train(loop_over(MinibatchEpochs(10, 4, 3, 5, CPU, lambda ids: again.append(ids) or ids.sum().float()), 3))
    assert all(torch.equal(a, b) for a, b in zip(visited, again))  # same seed, same order


def test_a_non_finite_loss_stops_training_with_the_models_message_naming_the_first_bad_epoch():
    values = iter([3.0, 2.0, float("nan"), 1.0, float("inf")])
    steps = FullDataSteps(5, torch.float32, CPU, lambda: torch.tensor(next(values)))
    with pytest.raises(InputError, match="diverged at epoch 3"):
        train(loop_over(steps, 5))


def test_early_stopping_ends_at_a_multiple_of_its_check_interval():
    steps = FullDataSteps(5 * EARLY_STOPPING_EVERY, torch.float64, CPU, lambda: torch.tensor(1.0))
    run = train(loop_over(steps, 5 * EARLY_STOPPING_EVERY, early_stopping=EarlyStopping(1e-4, 50)))
    assert run.stopped_at == run.done == EARLY_STOPPING_EVERY
