// Command peakrss runs a program and writes its peak resident set size (KiB) to a file when
// it exits, as GNU time's `-f %M -o FILE` does, but without holding the program's standard
// input, output and error open while it runs. A second line gives its CPU time in seconds:
// `cpu USER SYSTEM`.
//
// That matters for a GOCACHEPROG: the go command waits for the end of the program's stdout,
// and a wrapper that keeps its own copy open (GNU time does) makes the go command wait for
// the program to exit, hiding work the program does once the go command has its last answer.
//
//	peakrss -o FILE PROGRAM [ARGS...]
package main

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
)

func main() {
	if len(os.Args) < 4 || os.Args[1] != "-o" {
		fmt.Fprintln(os.Stderr, "usage: peakrss -o FILE PROGRAM [ARGS...]")
		os.Exit(2)
	}
	out, argv := os.Args[2], os.Args[3:]
	path, err := exec.LookPath(argv[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "peakrss: %v\n", err)
		os.Exit(127)
	}
	proc, err := os.StartProcess(path, argv, &os.ProcAttr{
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr},
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "peakrss: %v\n", err)
		os.Exit(127)
	}
	// The child has its own copies now; ours would keep the pipes open.
	os.Stdin.Close()
	os.Stdout.Close()
	os.Stderr.Close()
	state, err := proc.Wait()
	if err != nil {
		os.Exit(1)
	}
	var kib int64
	if usage, ok := state.SysUsage().(*syscall.Rusage); ok {
		kib = usage.Maxrss
	}
	text := strconv.FormatInt(kib, 10) + "\n" + fmt.Sprintf("cpu %.3f %.3f\n",
		state.UserTime().Seconds(), state.SystemTime().Seconds())
	// Written once the program has exited: its appearance says so.
	tmp := out + ".tmp"
	if os.WriteFile(tmp, []byte(text), 0o644) == nil {
		os.Rename(tmp, out)
	}
	os.Exit(state.ExitCode())
}
