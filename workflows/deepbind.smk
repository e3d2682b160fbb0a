# deepbind workflow: see README. Targets collected by the top-level `rule all`.
DEEPBIND_TARGETS = []
