//go:build !unix

package discovery

import "os/exec"

// setProcessGroup kills only the command itself at the timeout: the platform
// has no process groups.
func setProcessGroup(cmd *exec.Cmd) {
	cmd.Cancel = func() error { return cmd.Process.Kill() }
}
