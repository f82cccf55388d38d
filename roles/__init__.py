"""What one node chooses to do, one role per module.

roles/registry.py lists them by the names `node.py --roles` accepts. This
package imports nothing itself, so a process that needs one module (a
signature worker needs roles/signature_workers.py) does not load every role.
"""
