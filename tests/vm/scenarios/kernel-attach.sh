# Scenario: nbd-http-server's kernel module (netlink attach, RECONFIGURE
# after a server restart, STATUS, DISCONNECT, ioctl fallback) against the
# guest kernel's NBD driver; the steps are in
# nbd-http-server/examples/kernel_attach.rs.
name=kernel-attach
if kernel_attach; then
  echo "VMTEST PASS $name"
else
  rc=$?
  dmesg | grep -i nbd | tail -n 20
  echo "VMTEST FAIL $name kernel_attach exited $rc"
fi
