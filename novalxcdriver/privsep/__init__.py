"""The driver's privileged contexts (oslo.privsep); starting their daemons.

nova-compute is meant to run unprivileged; what needs a capability runs in
a privsep daemon, reached through the entry points of this package's
modules (the prefix every context below requires). An entry point takes
plain values (device names, a pid, a MAC) and checks them in the daemon
before doing anything: it never takes a command line, and a refusal is
:class:`novalxcdriver.exception.PrivilegedCallRefused`.

Contexts, one per set of capabilities (capabilities(7)):

- ``net_admin`` (``[novalxc_net_admin]``): the NICs' veth pairs, through
  netlink in the daemon itself (pyroute2), never an exec'd command, so
  that the capability set is all the daemon can use. CAP_NET_ADMIN for
  links; CAP_SYS_ADMIN and CAP_SYS_PTRACE to enter a running container's
  network namespace (setns(2) needs the first, opening another uid's
  /proc/PID/ns/net the second, ptrace(2) "access mode checking").

Starting a daemon: as oslo.privsep does by default (``sudo privsep-helper``
with nova-compute's config files, or ``[<section>] helper_command``),
except when nova-compute runs as root with no helper_command configured:
root needs no sudo, so the daemon is this Python running
``oslo_privsep.daemon`` directly (helper_command below). A fresh
interpreter rather than oslo.privsep's fork method: a fork would carry
nova-compute's open sockets and threads into the daemon.
"""

import os
import shlex
import sys

from oslo_config import cfg
from oslo_privsep import capabilities as caps
from oslo_privsep import priv_context

# What root runs instead of "[sudo] privsep-helper": the same daemon.
ROOT_DAEMON = [sys.executable, '-m', 'oslo_privsep.daemon']


def helper_command(context_command, helper_command_opt):
    """The command that starts a privsep daemon, as a list.

    :param context_command: what oslo.privsep would run (its
        PrivContext.helper_command), ending in ``--privsep_context X
        --privsep_sock_path Y``.
    :param helper_command_opt: the context's ``helper_command`` option.
    :returns: context_command, unless this process is root and no
        helper_command is configured; then the same with its
        ``[sudo|rootwrap] privsep-helper`` replaced by this interpreter
        running oslo_privsep.daemon.
    """
    if os.geteuid() != 0 or helper_command_opt:
        return context_command
    i = context_command.index('privsep-helper')
    return ROOT_DAEMON + context_command[i + 1:]


def root_helper_command_opt(conf):
    """helper_command for another library's context when run as root.

    For os-vif's contexts, which are plain PrivContexts: the value to give
    their ``helper_command`` option (it is a string, split by shlex; the
    daemon's --privsep_context and --privsep_sock_path are appended to
    it). With conf's config files, as privsep-helper would get them.
    """
    cmd = list(ROOT_DAEMON)
    for opt, arg in (('config_file', '--config-file'),
                     ('config_dir', '--config-dir')):
        try:
            paths = conf[opt] or ()
        except cfg.NoSuchOptError:  # conf was never parsed (tests)
            paths = ()
        for path in paths:
            cmd += [arg, path]
    return ' '.join(shlex.quote(arg) for arg in cmd)


class _Context(priv_context.PrivContext):

    def helper_command(self, sockpath):
        return helper_command(super().helper_command(sockpath),
                              self.conf.helper_command)


net_admin = _Context(
    'novalxcdriver.privsep',
    cfg_section='novalxc_net_admin',
    pypath=__name__ + '.net_admin',
    capabilities=[caps.CAP_NET_ADMIN, caps.CAP_SYS_ADMIN,
                  caps.CAP_SYS_PTRACE],
)

CONTEXTS = (net_admin,)


def list_opts():
    """Each context's section, for oslo-config-generator."""
    return [(ctx.cfg_section, priv_context.OPTS) for ctx in CONTEXTS]
