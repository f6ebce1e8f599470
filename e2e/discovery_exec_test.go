//go:build linux

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-between/between/internal/testpeers"
)

// TestDiscoveryExec: the exec source runs a shell script that prints the
// contents of a state file the test rewrites; the config is a Caddyfile. Bad
// runs: garbage output, a non-zero exit, and a hang that is killed at the
// timeout with its child (checked in /proc).
func TestDiscoveryExec(t *testing.T) {
	sh := needTool(t, "sh", "dash")
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	childPID := filepath.Join(dir, "child.pid")
	script := filepath.Join(dir, "discover.sh")
	body := `#!/bin/sh
case "$(head -n 1 "` + state + `")" in
hang)
	sleep 60 &
	echo $! > "` + childPID + `.tmp"; mv "` + childPID + `.tmp" "` + childPID + `"
	wait
	;;
fail)
	echo "inventory unreachable" >&2
	exit 3
	;;
esac
cat "` + state + `"
`
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	src := pollSource{
		publish: func(addrs []string) {
			var lines []string
			for _, a := range addrs {
				lines = append(lines, a+" weight=1", "")
			}
			writeAtomic(t, state, strings.Join(lines, "\n"))
		},
		bad: []func() string{
			func() string { writeAtomic(t, state, "127.0.0.1:1\nnot-a-backend\n"); return `line 2 "not-a-backend"` },
			func() string { writeAtomic(t, state, "fail\n"); return "exit status 3: inventory unreachable" },
			func() string {
				os.Remove(childPID)
				writeAtomic(t, state, "hang\n")
				return "killed"
			},
		},
	}
	runPollScenario(t, "exec", src, func(name, listen string) *instance {
		return startCaddyfile(t, fmt.Sprintf(`{
	admin ADMIN
	layer4 {
		between+tcp/%s {
			route {
				between %s {
					balance roundrobin
					discovery exec %s %s {
						interval 1s
						timeout 500ms
					}
				}
			}
		}
	}
}
`, listen, name, sh, script))
	})
	// the hanging script's child was killed with it
	b, err := os.ReadFile(childPID)
	if err != nil {
		t.Fatalf("the hanging script did not run: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	// should the kill have failed, stop the sleep this test started
	t.Cleanup(func() {
		if !testpeers.ProcessGone(pid) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	waitFor(t, 3*time.Second, fmt.Sprintf("the hanging script's child %d to be killed", pid), func() bool {
		return testpeers.ProcessGone(pid)
	})
}
