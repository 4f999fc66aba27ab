"""The simulator: a model of guest_memfd, KVM's attribute ioctls and host memory.

ranges.py   per-page attributes kept as merged ranges
buddy.py    host physical memory (buddy allocator, pageblock migratetypes)
model.py    guest_memfd files, shared backings, the VM: the kernel objects and their ioctls
backend.py  SimTarget: executes strategy steps on the model, charging the cost model
"""
