//go:build unix

package discovery

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddy-between/between/internal/testpeers"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// needSh skips (fails in CI) when there is no POSIX shell to run scripts.
func needSh(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("sh"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("sh is not installed")
		}
		t.Skip("sh is not installed; skipping the exec tests")
	}
}

// writeScript writes an executable shell script and returns its path.
func writeScript(t *testing.T, dir, name, body string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// execSource loads an exec source for argv with extra JSON fields.
func execSource(t *testing.T, extra string, argv ...string) Configured {
	t.Helper()
	cmd, err := json.Marshal(argv)
	if err != nil {
		t.Fatal(err)
	}
	return mustLoadKind(t, "exec", `{"exec_command":`+string(cmd)+extra+`}`)
}

func TestExecFetch(t *testing.T) {
	needSh(t)
	dir := t.TempDir()
	for i, tt := range []struct {
		name, body string
		args       []string
		want       string   // backend lines when it succeeds
		wantErr    []string // error parts when it fails
		notInErr   string
	}{
		{name: "backend lines", body: `printf '127.0.0.1:6379 weight=2\n\n  # a comment\n[::1]:6380 priority=2 max_connections=5 sni=db.example\n\t\n10.0.0.1:1\n'`,
			want: "127.0.0.1:6379 weight=2 | [::1]:6380 priority=2 max_connections=5 sni=db.example | 10.0.0.1:1"},
		{name: "no trailing newline", body: `printf '127.0.0.1:1'`, want: "127.0.0.1:1"},
		{name: "CRLF line ends", body: `printf '127.0.0.1:1\r\n127.0.0.1:2\r\n'`, want: "127.0.0.1:1 | 127.0.0.1:2"},
		{name: "empty output is an empty list", body: `true`, want: ""},
		{name: "arguments are passed", body: `[ "$1" = "a b" ] && [ "$2" = x ] && [ $# -eq 2 ] && echo 127.0.0.1:9`, args: []string{"a b", "x"}, want: "127.0.0.1:9"},
		{name: "garbage line fails the fetch", body: `echo 127.0.0.1:1; echo 'Traceback: oops'`, wantErr: []string{"line 2", `"Traceback: oops"`}},
		{name: "port 0 is an error", body: `echo 127.0.0.1:0`, wantErr: []string{"line 1", "port"}},
		{name: "bad attribute", body: `echo '127.0.0.1:1 weight=-1'`, wantErr: []string{"line 1", "weight"}},
		{name: "non-zero exit quotes stderr's first line", body: `echo 127.0.0.1:1; echo >&2; echo 'cannot reach the registry' >&2; echo 'second line' >&2; exit 3`,
			wantErr: []string{"exit status 3", "cannot reach the registry"}, notInErr: "second line"},
		{name: "non-zero exit without stderr", body: `exit 1`, wantErr: []string{"exit status 1"}},
		{name: "huge output", body: `yes 127.0.0.1:1 | head -c 5000000`, wantErr: []string{"larger than"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := writeScript(t, dir, "discover"+strconv.Itoa(i), tt.body)
			src := execSource(t, "", append([]string{path}, tt.args...)...)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			got, err := src.Fetch(ctx)
			if tt.wantErr != nil {
				wantErrParts(t, err, append(tt.wantErr, path)...)
				if tt.notInErr != "" && strings.Contains(err.Error(), tt.notInErr) {
					t.Errorf("error %q contains %q", err, tt.notInErr)
				}
				if got != nil {
					t.Errorf("failed fetch returned %v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got == nil || asLines(got) != tt.want {
				t.Fatalf("Fetch = %q (nil %v), want %q", asLines(got), got == nil, tt.want)
			}
		})
	}
	t.Run("nonexistent command", func(t *testing.T) {
		missing := filepath.Join(dir, "no-such-script")
		_, err := execSource(t, "", missing).Fetch(context.Background())
		wantErrParts(t, err, "exec", missing, "no such file")
		_, err = execSource(t, "", "no-such-program-on-path").Fetch(context.Background())
		wantErrParts(t, err, "exec", "no-such-program-on-path", "not found")
	})
}

// TestExecKilledAtTimeout runs a script that starts a child and hangs: the
// fetch fails at the timeout and neither the script nor its child is left.
func TestExecKilledAtTimeout(t *testing.T) {
	needSh(t)
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pids")
	// the child sleeps in the background; the script waits for it
	path := writeScript(t, dir, "hang", `sleep 60 & echo "$$ $!" > "`+pidFile+`.tmp"; mv "`+pidFile+`.tmp" "`+pidFile+`"; echo 127.0.0.1:1; wait`)
	readPIDs := func(t *testing.T) []int {
		t.Helper()
		var pids []int
		deadline := time.Now().Add(5 * time.Second)
		for len(pids) < 2 && time.Now().Before(deadline) {
			b, err := os.ReadFile(pidFile)
			if err == nil {
				pids = pids[:0]
				for _, f := range strings.Fields(string(b)) {
					if n, err := strconv.Atoi(f); err == nil {
						pids = append(pids, n)
					}
				}
			}
			if len(pids) < 2 {
				time.Sleep(10 * time.Millisecond)
			}
		}
		if len(pids) < 2 {
			t.Fatalf("the script did not write its PIDs")
		}
		// should the kill have failed, stop what this test started
		t.Cleanup(func() {
			for _, pid := range pids {
				if !testpeers.ProcessGone(pid) {
					syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		})
		return pids
	}
	checkGone := func(t *testing.T, pids []int) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for _, pid := range pids {
			for !testpeers.ProcessGone(pid) {
				if time.Now().After(deadline) {
					t.Fatalf("process %d is still running after the fetch was killed", pid)
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
	for _, tt := range []struct {
		name    string
		timeout string // the source's timeout setting
		want    time.Duration
	}{
		{"timeout setting", "300ms", 300 * time.Millisecond},
		{"default timeout of exec", "0", ExecDefaultTimeout},
	} {
		t.Run(tt.name, func(t *testing.T) {
			os.Remove(pidFile)
			src := execSource(t, `,"interval":"1h","timeout":"`+tt.timeout+`"`, path)
			if got := src.Settings().FetchTimeout(); got != tt.want {
				t.Fatalf("FetchTimeout() = %s, want %s", got, tt.want)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			rec := newRecord()
			r := rec.runner(src)
			start := time.Now()
			done := rec.start(ctx, r)
			err := recv(t, rec.fetches, tt.want+5*time.Second, "the fetch result")
			took := time.Since(start)
			wantErrParts(t, err, "exec", path, "killed")
			if took < tt.want || took > tt.want+time.Second {
				t.Errorf("the fetch failed after %v, want about %v", took.Round(time.Millisecond), tt.want)
			}
			checkGone(t, readPIDs(t))
			nothing(t, rec.updates, 0, "update from a killed command")
			if c := r.Counts(); c.FetchesFailed != 1 || c.FetchesOK != 0 {
				t.Errorf("Counts() = %+v, want 1 failed", c)
			}
			cancel()
			recv(t, done, time.Second, "Run return")
		})
	}
}

// TestExecKeepsLastGoodList runs a script whose output the test switches:
// garbage and a failing exit keep the last good list and are reported.
func TestExecKeepsLastGoodList(t *testing.T) {
	needSh(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	set := func(body string) {
		t.Helper()
		if err := os.WriteFile(state+".tmp", []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(state+".tmp", state); err != nil {
			t.Fatal(err)
		}
	}
	// the state file is the script's output; "exit N" in it makes it fail
	path := writeScript(t, dir, "discover", `if grep -q '^exit' "`+state+`"; then echo "registry down" >&2; exit 4; fi; cat "`+state+`"`)
	for _, policy := range []string{"keeplast", "setempty"} {
		t.Run(policy, func(t *testing.T) {
			set("127.0.0.1:1\n127.0.0.1:2\n")
			src := execSource(t, `,"interval":"50ms","failpolicy":"`+policy+`"`, path)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			rec := newRecord()
			r := rec.runner(src)
			done := rec.start(ctx, r)
			defer func() { cancel(); <-done }()
			waitList(t, rec.updates, nil, "127.0.0.1:1 | 127.0.0.1:2", 5*time.Second, "exec")
			for _, bad := range []struct{ body, mention string }{
				{"127.0.0.1:3\nhello world\n", `line 2 "hello world"`},
				{"exit\n", "registry down"},
			} {
				set(bad.body)
				rec.waitError(t, bad.mention, 5*time.Second, func(l []backend.Backend) {
					if policy == "keeplast" || l != nil {
						t.Fatalf("update %q while the script fails (failpolicy %s)", asLines(l), policy)
					}
				})
			}
			set("127.0.0.1:2\n")
			waitList(t, rec.updates, nil, "127.0.0.1:2", 5*time.Second, "exec")
			if c := r.Counts(); c.FetchesFailed < 2 || c.FetchesOK < 2 {
				t.Errorf("Counts() = %+v, want at least 2 failed and 2 ok", c)
			}
		})
	}
}

func TestExecValidate(t *testing.T) {
	for _, tt := range []struct{ js, mention string }{
		{`{}`, "exec_command"},
		{`{"exec_command":[]}`, "exec_command"},
		{`{"exec_command":[""]}`, "exec_command"},
		{`{"exec_command":["/bin/true"],"failpolicy":"drop"}`, "failpolicy"},
		{`{"exec_command":["/bin/true"],"timeout":"-1s"}`, "timeout"},
		{`{"exec_command":"/bin/true"}`, "exec_command"},
	} {
		_, err := loadKind(t, "exec", tt.js)
		wantErrParts(t, err, tt.mention)
	}
	src := mustLoadKind(t, "exec", `{"exec_command":["/bin/true"],"timeout":"1s"}`)
	if got := src.Settings().FetchTimeout(); got != time.Second {
		t.Errorf("FetchTimeout() = %s with timeout 1s", got)
	}
}

func TestExecCaddyfile(t *testing.T) {
	newExec := func() caddyfile.Unmarshaler { return new(Exec) }
	goldenCaddyfile(t, "testdata/exec", newExec)
	caddyfileErrors(t, newExec, []struct{ name, input, mention string }{
		{"no command", "exec", "missing the command"},
		{"no command in block", "exec {\n interval 1s\n}", "missing the command"},
		{"command twice", "exec /bin/a {\n command /bin/b\n}", "twice"},
		{"command without args", "exec {\n command\n}", "argument"},
		{"unknown", "exec /bin/a {\n shell bash\n}", "shell"},
		{"bad timeout", "exec /bin/a {\n timeout soon\n}", "timeout"},
	})
}

// The exec module's JSON has exactly gobetween's field names.
func TestExecJSON(t *testing.T) {
	e := Exec{Command: []string{"/bin/x", "-v"}, Common: Common{Interval: caddy.Duration(time.Second)}}
	out, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"interval":1000000000,"exec_command":["/bin/x","-v"]}`; string(out) != want {
		t.Fatalf("got %s, want %s", out, want)
	}
}
