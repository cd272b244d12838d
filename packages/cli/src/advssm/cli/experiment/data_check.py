"""Every data set of a run's cells loaded once before the first cell trains."""
from __future__ import annotations

from ..data import load_dataset
from ..errors import ConfigError, DataError


def check_data(cells) -> None:
    """Load each distinct data set of ``cells`` once, before the first cell trains: a missing or unreadable data
    set, or a train / test size larger than its split, fails the run now instead of after the cells before it
    have trained (a grid whose second cell's data set was missing trained the first to the end, then failed)."""
    seen = set()
    for cell in cells:
        data = cell.data
        key = (data.dataset, data.data_dir, data.train_size, data.test_size, data.tiny_classes, data.augment)
        if key in seen:
            continue
        seen.add(key)
        try:
            load_dataset(data.dataset, data.data_dir, data.train_size, data.test_size, data.download,
                         data.tiny_classes, data.augment, seed=cell.train.seed)
        except (ConfigError, DataError) as exc:
            raise type(exc)(f"cell {cell.name}: {exc} (nothing was trained)") from exc
