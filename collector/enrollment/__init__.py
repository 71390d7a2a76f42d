"""Enrollment: a node's keyword model taught its household's voices and words of its own.

- :mod:`.adapt`: how a household's last layer is made from takes (numpy only, on the Pi);
- :mod:`.store`: the enrolled nodes' file, which ``python -m collector enroll`` changes and a
  running collector reads again;
- :mod:`.broker`: takes that arrive over the broker (``node enroll``), gathered and adapted.
"""
