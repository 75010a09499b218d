from oslo_privsep import priv_context


def _no_daemon(context, *args, **kwargs):
    raise AssertionError(
        'a unit test reached privsep context %s unmocked: mock the entry '
        'point or run the context in this process (set_client_mode)'
        % context.pypath)


# Unit tests never start a privsep daemon (as root they could).
priv_context.PrivContext.start = _no_daemon
