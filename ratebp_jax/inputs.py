"""How input batches become time steps (SPEC §2).

A batch is either static images [B, H, W, C], repeated at every time step
(direct coding: the first conv-BN-LIF is the encoder), or a sequence
[B, T, H, W, C] (event frames), used as given. Inside the library arrays are
time-major: [T, B, H, W, C].
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def check_inputs(images: jax.Array, timesteps: int) -> None:
    """Raises ValueError naming ``timesteps`` or ``images`` if they do not fit."""
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"timesteps must be an integer >= 1, got {timesteps!r}")
    if images.ndim not in (4, 5):
        raise ValueError(f"images must be [B, H, W, C] or [B, T, H, W, C], got shape {images.shape}")
    if images.ndim == 5 and images.shape[1] != timesteps:
        raise ValueError(f"images is a sequence of {images.shape[1]} steps ([B, T, H, W, C] = {images.shape}) "
                         f"but timesteps={timesteps}")


def is_sequence(images: jax.Array) -> bool:
    return images.ndim == 5


def time_major(images: jax.Array, timesteps: int) -> jax.Array:
    """[T, B, H, W, C]: static images repeated T times, or the sequence transposed."""
    if is_sequence(images):
        return jnp.moveaxis(images, 1, 0)
    return jnp.broadcast_to(images, (timesteps,) + images.shape)


def time_mean(images: jax.Array) -> jax.Array:
    """[B, H, W, C]: the mean input over time (the image itself when static)."""
    return jnp.mean(images, axis=1) if is_sequence(images) else images


def first_step(images: jax.Array) -> jax.Array:
    """[B, H, W, C]: the input at t = 1."""
    return images[:, 0] if is_sequence(images) else images


def scan_over_time(step: Callable[[Any, jax.Array], tuple[Any, Any]], carry: Any, images: jax.Array,
                   timesteps: int, *, unroll: bool = False) -> tuple[Any, Any]:
    """lax.scan of step(carry, x_t) over the T steps; a static image is not copied T times.

    unroll=True writes the T steps out as straight-line code (no XLA loop).
    """
    if is_sequence(images):
        return jax.lax.scan(step, carry, jnp.moveaxis(images, 1, 0), unroll=unroll)
    return jax.lax.scan(lambda carry, _: step(carry, images), carry, None, length=timesteps, unroll=unroll)
