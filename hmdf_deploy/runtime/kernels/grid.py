"""Launch-size arithmetic in plain Python. Triton's own `triton.cdiv` and `triton.next_power_of_2`
are jit functions, whose call from Python costs microseconds each: with six per synapse call they
took over half of its host time (measured on the CPU with the launch itself stubbed out)."""


def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉ for a ≥ 0, b > 0."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two ≥ n (1 for n ≤ 1)."""
    return 1 << max(n - 1, 0).bit_length()
