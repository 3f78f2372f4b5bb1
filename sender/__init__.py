"""The sender child: spoold's delivery agent ("spoold sender" in ps).

The queue runner has it forked (sender.zygote) and feeds it jobs over a
pipe (sender.protocol); it resolves each job's destination (sender.mx),
delivers over SMTP (sender.client) and answers one result per recipient,
judged by the single outcome policy of sender.trouble.  It never imports spoold's store and holds
no database credentials.  See sender/__main__.py for the program's manual;
``python -m sender`` runs it on its own, as the tests do.
"""

TITLE = "spoold sender"  # the process title of a child, for ps and "spoold status"
