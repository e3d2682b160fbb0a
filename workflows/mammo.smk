# mammo workflow: see README. Targets collected by the top-level `rule all`.
MAMMO_TARGETS = []
