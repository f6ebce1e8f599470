package healthchecks

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-between/between/backend"
)

// script writes an executable shell script into dir and returns its path.
func writeScript(t *testing.T, dir, name, body string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func execConfig(t *testing.T, extra string, argv ...string) string {
	t.Helper()
	cmd, err := json.Marshal(argv)
	if err != nil {
		t.Fatal(err)
	}
	return `{"interval":"1s","exec_command":` + string(cmd) + extra + `}`
}

func TestExecCheck(t *testing.T) {
	needBinary(t, "sh")
	dir := t.TempDir()
	tests := []struct {
		name, body, extra string
		wantErr           string
		noVerdict         bool
	}{
		{"positive", `printf '1\n'`, "", "", false},
		{"positive with trailing white space", `printf '1 \t\n\n'`, "", "", false},
		{"negative", `echo 0`, "", `output "0" (unhealthy)`, false},
		{"garbage", `echo maybe`, "", `output "maybe" is neither "1" nor "0"`, true},
		{"empty output", `true`, "", "is neither", true},
		{"non-zero exit despite positive output", `echo 1; echo broken >&2; exit 2`, "", "exit status 2: broken", false},
		{"host and port appended", `[ "$1" = extra-arg ] && [ "$2" = 127.0.0.1 ] && [ "$3" = 6379 ] && [ $# -eq 3 ] && echo 1 || echo 0`, "", "", false},
		{"custom outputs positive", `echo UP`, `,"exec_expected_positive_output":"UP","exec_expected_negative_output":"DOWN"`, "", false},
		{"custom outputs negative", `echo DOWN`, `,"exec_expected_positive_output":"UP","exec_expected_negative_output":"DOWN"`, `"DOWN" (unhealthy)`, false},
		{"custom outputs default no longer applies", `echo 1`, `,"exec_expected_positive_output":"UP"`, "is neither", true},
		{"huge output is bounded", `yes 1 | head -c 1000000`, "", "is neither", true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeScript(t, dir, "check"+strconv.Itoa(i), tt.body)
			e := mustLoad(t, "exec", execConfig(t, tt.extra, path, "extra-arg"))
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := e.Check(ctx, &backend.Backend{Host: "127.0.0.1", Port: "6379"})
			checkErr(t, err, tt.wantErr)
			if got := errors.Is(err, ErrNoVerdict); got != tt.noVerdict {
				t.Fatalf("errors.Is(err, ErrNoVerdict) = %v, want %v (err %v)", got, tt.noVerdict, err)
			}
		})
	}
	t.Run("missing program", func(t *testing.T) {
		e := mustLoad(t, "exec", execConfig(t, "", filepath.Join(dir, "nonexistent")))
		err := e.Check(context.Background(), &backend.Backend{Host: "127.0.0.1", Port: "1"})
		checkErr(t, err, "no such file")
	})
}

// TestExecKilledAtTimeout checks that a hanging command and its children are
// killed (the whole process group) and that the check counts as a failure.
func TestExecKilledAtTimeout(t *testing.T) {
	needBinary(t, "sh")
	needBinary(t, "sleep")
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	path := writeScript(t, dir, "hang", `echo $$ > "`+pidFile+`"; sleep 60; echo 1`)
	readPID := func() int {
		var pid int
		waitFor(t, 5*time.Second, "the script to start", func() bool {
			b, err := os.ReadFile(pidFile)
			if err != nil || !strings.HasSuffix(string(b), "\n") {
				return false
			}
			pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
			return err == nil
		})
		return pid
	}

	t.Run("Check", func(t *testing.T) {
		e := mustLoad(t, "exec", execConfig(t, "", path))
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		err := e.Check(ctx, &backend.Backend{Host: "127.0.0.1", Port: "1"})
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("Check returned after %s; the group was not killed at the timeout", took)
		}
		checkErr(t, err, "killed")
		pid := readPID()
		// SIGKILL to the group is asynchronous: Check has reaped the shell,
		// but its sleep may take a moment to die.
		waitFor(t, 3*time.Second, "the process group to be killed", func() bool { return !processGroupAlive(t, pid) })
	})

	t.Run("through the Scheduler", func(t *testing.T) {
		os.Remove(pidFile)
		e := mustLoad(t, "exec", execConfig(t, `,"timeout":"200ms","interval":"1h"`, path))
		rec := newRecorder(nil)
		s := NewScheduler(e, nil, rec.onChange)
		defer s.Stop()
		s.Update([]*backend.Backend{{Host: "127.0.0.1", Port: "1"}})
		ev := rec.next(t, 5*time.Second)
		if ev.healthy || !strings.Contains(ev.reason, "timed out after 200ms") {
			t.Fatalf("transition %+v, want down on timeout", ev)
		}
		pid := readPID()
		waitFor(t, 3*time.Second, "the process group to be killed", func() bool { return !processGroupAlive(t, pid) })
	})
}

func TestExecNoVerdictKeepsStatus(t *testing.T) {
	needBinary(t, "sh")
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	// Prints the content of the state file: the test switches it.
	path := writeScript(t, dir, "check", `cat "`+state+`"`)
	write := func(s string) {
		if err := os.WriteFile(state+".tmp", []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(state+".tmp", state); err != nil {
			t.Fatal(err)
		}
	}
	write("0\n")
	e := mustLoad(t, "exec", execConfig(t, `,"interval":"20ms"`, path))
	rec := newRecorder(nil)
	logs := make(chan string, 100)
	s := NewScheduler(e, nil, rec.onChange)
	s.Log = func(addr, msg string) {
		select {
		case logs <- msg:
		default:
		}
	}
	defer s.Stop()
	s.Update([]*backend.Backend{{Host: "127.0.0.1", Port: "1"}})
	if ev := rec.next(t, 5*time.Second); ev.healthy {
		t.Fatalf("transition %+v, want down", ev)
	}
	write("what?\n")
	select {
	case msg := <-logs:
		if !strings.Contains(msg, `"what?"`) {
			t.Fatalf("log %q does not quote the output", msg)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no-verdict output was not logged")
	}
	rec.none(t, 100*time.Millisecond)
	if s.Healthy("127.0.0.1:1") {
		t.Fatal("no-verdict output changed the status")
	}
	write("1\n")
	if ev := rec.next(t, 5*time.Second); !ev.healthy {
		t.Fatalf("transition %+v, want up", ev)
	}
}
