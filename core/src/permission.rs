//! Permissions (RULES.md §2, DICT-PERM-*). Placeholder: being written.
