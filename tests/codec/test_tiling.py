import numpy as np
import pytest

from codec.tiling import TileGrid, merge_tiles, split_tiles


@pytest.mark.parametrize("shape", [(440, 440), (2500, 2048), (1, 1), (255, 257), (256, 256), (384, 274)])
def test_split_merge_round_trip_on_odd_sizes(shape):
    rng = np.random.default_rng(0)
    img = rng.integers(-2000, 4096, size=shape).astype(np.int16)
    grid, tiles = split_tiles(img, 256)
    assert grid.count == -(-shape[0] // 256) * -(-shape[1] // 256)
    assert all(t.shape == (256, 256) for t in tiles)
    assert np.array_equal(merge_tiles(grid, tiles), img)


def test_edge_padding_replicates_the_border():
    img = np.arange(12, dtype=np.uint16).reshape(3, 4)
    grid, tiles = split_tiles(img, 4)
    assert grid.count == 1
    assert tiles[0][3].tolist() == img[2].tolist()  # last row repeated


def test_boxes_cover_the_image_once():
    grid = TileGrid(300, 520, 256)
    cover = np.zeros((300, 520), dtype=int)
    for i in range(grid.count):
        r0, r1, c0, c1 = grid.box(i)
        cover[r0:r1, c0:c1] += 1
    assert (cover == 1).all()
    with pytest.raises(IndexError):
        grid.box(grid.count)


def test_bad_arguments():
    with pytest.raises(ValueError):
        split_tiles(np.zeros((2, 2, 2)), 4)
    grid, tiles = split_tiles(np.zeros((10, 10)), 4)
    with pytest.raises(ValueError):
        merge_tiles(grid, tiles[:-1])
