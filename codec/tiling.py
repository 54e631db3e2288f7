"""Fixed-size tiles: the DPU runs compiled, fixed shapes, so every image is coded
as a grid of ``tile x tile`` blocks, each decodable on its own.

Edges are padded by edge replication (not zeros) so that the padding costs few
bits and no ringing reaches the real pixels; the padding is cropped away after
decoding. Tiles are in raster order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TileGrid:
    rows: int
    cols: int
    tile: int

    @property
    def grid_rows(self) -> int:
        return -(-self.rows // self.tile)

    @property
    def grid_cols(self) -> int:
        return -(-self.cols // self.tile)

    @property
    def count(self) -> int:
        return self.grid_rows * self.grid_cols

    def box(self, index: int) -> tuple[int, int, int, int]:
        """(r0, r1, c0, c1) of tile ``index`` inside the image, clipped to the image."""
        if not 0 <= index < self.count:
            raise IndexError(f"tile {index} outside a grid of {self.count}")
        gr, gc = divmod(index, self.grid_cols)
        r0, c0 = gr * self.tile, gc * self.tile
        return r0, min(r0 + self.tile, self.rows), c0, min(c0 + self.tile, self.cols)


def split_tiles(image: np.ndarray, tile: int) -> tuple[TileGrid, list[np.ndarray]]:
    """A 2-D image -> (grid, list of tile x tile arrays), edge tiles padded by replication."""
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    if tile <= 0:
        raise ValueError("tile must be positive")
    grid = TileGrid(image.shape[0], image.shape[1], tile)
    tiles = []
    for i in range(grid.count):
        r0, r1, c0, c1 = grid.box(i)
        block = image[r0:r1, c0:c1]
        if block.shape != (tile, tile):
            block = np.pad(block, ((0, tile - block.shape[0]), (0, tile - block.shape[1])), mode="edge")
        tiles.append(np.ascontiguousarray(block))
    return grid, tiles


def merge_tiles(grid: TileGrid, tiles: list[np.ndarray]) -> np.ndarray:
    """Inverse of ``split_tiles``: crop the padding and place every tile."""
    if len(tiles) != grid.count:
        raise ValueError(f"{len(tiles)} tiles for a grid of {grid.count}")
    out = np.empty((grid.rows, grid.cols), dtype=tiles[0].dtype)
    for i, t in enumerate(tiles):
        r0, r1, c0, c1 = grid.box(i)
        out[r0:r1, c0:c1] = t[: r1 - r0, : c1 - c0]
    return out
