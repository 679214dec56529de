"""Consistency checkers shared by the simulator (``sim``) and the benchmarks
(``bench``): they judge a recorded history, simulated or real, and import
neither side (nor ``hareg``), so each can use them on its own records.

    register.py  linearizability of one register (a tag) from call/return events
    tags.py      a client history of tag writes and reads, checked tag by tag
"""
