"""A replica's performance, learned online, and the latency a fleet of them would give.

- :mod:`.stepmodel`: the time of one engine step as a function of its batch, its prefill tokens and
  the context it reads, with the GPU table as its prior and a recursive fit from vLLM's exports.
- :mod:`.queueing`: the queue-time tail of a fleet of N such replicas, for the arrivals and request
  sizes measured, behind a random Service or a least-loaded router.

Pure: no I/O, no clock.
"""
