# segment workflow: see README. Targets collected by the top-level `rule all`.
SEGMENT_TARGETS = []
