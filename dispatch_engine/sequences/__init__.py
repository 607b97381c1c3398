"""Sequences: a campaign's follow-up steps and each recipient's place in them.

`steps.py` parses and checks the steps of a schedule request; `sequencer.py` makes each
follow-up's dispatch once the previous step was sent and its wait has passed (the sweeper's
leader runs it). Each recipient's state lives in `sequence_members`, moved by a trigger when
a step's dispatch ends (migration 0018) and stopped by `Feedback.handle` or by hand
(`store/sequences.py`). docs/sequences.md tells the whole story.
"""
