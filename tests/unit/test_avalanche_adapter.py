"""Our offline streams as Avalanche benchmarks, usable by Avalanche's own strategies."""

from __future__ import annotations

import torch

from lifelong.platform.config import StreamConfig
from lifelong.streams.avalanche_adapter import to_avalanche
from lifelong.streams.batches import Featurizer, Samples
from lifelong.streams.registry import build_stream


def test_split_digits_become_one_experience_per_task_with_identical_features():
    stream = build_stream(StreamConfig(dataset="digits", scenario="split", n_tasks=3, setting="task"), 0)
    benchmark = to_avalanche(stream)
    assert len(benchmark.train_stream) == 3 and len(benchmark.test_stream) == 3
    featurize = Featurizer(stream)
    for task, experience in zip(stream.tasks, benchmark.train_stream):
        assert len(experience.dataset) == len(task.train.y)
        assert sorted(set(experience.dataset.targets)) == [2 * task.index, 2 * task.index + 1]
        x, y, t = experience.dataset[5]
        expected = featurize(Samples.of(task, "train")[torch.tensor([5])])
        assert torch.equal(x, expected.x[0]) and y == int(expected.y[0]) and t == task.index


def test_an_avalanche_strategy_trains_on_the_adapted_stream():
    from avalanche.training.supervised import Naive

    torch.manual_seed(0)
    stream = build_stream(StreamConfig(dataset="digits", scenario="split", n_tasks=2,
                                       setting="class"), 0)
    benchmark = to_avalanche(stream)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                     train_mb_size=32, train_epochs=3, eval_mb_size=256, evaluator=None)
    strategy.train(benchmark.train_stream[0])
    with torch.no_grad():
        test = benchmark.test_stream[0].dataset
        xs = torch.stack([test[i][0] for i in range(len(test))])
        ys = torch.tensor([test[i][1] for i in range(len(test))])
        accuracy = (model(xs).argmax(1) == ys).float().mean().item()
    assert accuracy > 0.9, accuracy
