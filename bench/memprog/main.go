// Command memprog is the least a GOCACHEPROG program can do: the floor that bench/bench.py
// measures goremotecache's warm local builds against.
//
// It keeps every entry in a map in memory. A get is a map lookup answered at once with the
// path of a file written earlier; a put writes its body to a file named by its output ID and
// records it in the map. At close the map is written to one index file in the directory, and
// the next run loads that index at start, so a warm run does no file-system work per request
// at all: what remains is the go command's side of the protocol (JSON, pipes, checking and
// reading the DiskPath files) and this process's JSON decoding.
//
//	GOCACHEPROG="memprog -dir DIR" go build std
//
// Requests are answered one at a time, in order, by one goroutine: with no I/O on a get there is
// nothing to overlap. It is a benchmark's baseline, not a cache: no locking between processes
// sharing DIR (run one at a time), no trimming, no checks of the files it points at.
package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// request and response are the go command's cacheprog.Request and cacheprog.Response
// (cmd/go/internal/cacheprog), with the fields this program uses.
type request struct {
	ID       int64
	Command  string
	ActionID []byte `json:",omitempty"`
	OutputID []byte `json:",omitempty"`
	BodySize int64  `json:",omitempty"`
}

type response struct {
	ID            int64
	Err           string     `json:",omitempty"`
	KnownCommands []string   `json:",omitempty"`
	Miss          bool       `json:",omitempty"`
	OutputID      []byte     `json:",omitempty"`
	Size          int64      `json:",omitempty"`
	Time          *time.Time `json:",omitempty"`
	DiskPath      string     `json:",omitempty"`
}

type entry struct {
	outputID []byte
	size     int64
	time     time.Time
}

const indexName = "index"

func main() {
	dir := flag.String("dir", "", "the directory holding the bodies and the index (created if missing)")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "memprog: -dir is required: give the directory to keep the entries in")
		os.Exit(2)
	}
	root, err := filepath.Abs(*dir)
	if err == nil {
		err = os.MkdirAll(filepath.Join(root, "o"), 0o755)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "memprog: %v\n", err)
		os.Exit(1)
	}
	entries, err := loadIndex(filepath.Join(root, indexName))
	if err != nil {
		fmt.Fprintf(os.Stderr, "memprog: reading the index: %v (delete %s to start empty)\n", err, filepath.Join(root, indexName))
		os.Exit(1)
	}
	if err := serve(root, entries, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "memprog: %v\n", err)
		os.Exit(1)
	}
}

func serve(root string, entries map[string]entry, in io.Reader, out io.Writer) error {
	r := bufio.NewReaderSize(in, 1<<16)
	w := bufio.NewWriterSize(out, 1<<16)
	enc := json.NewEncoder(w)
	send := func(res *response) error {
		if err := enc.Encode(res); err != nil {
			return err
		}
		return w.Flush()
	}
	if err := send(&response{KnownCommands: []string{"get", "put", "close"}}); err != nil {
		return err
	}
	dirty := false
	for {
		line, err := r.ReadBytes('\n')
		if err == io.EOF && len(strings.TrimSpace(string(line))) == 0 {
			if dirty {
				return saveIndex(filepath.Join(root, indexName), entries)
			}
			return nil
		}
		if err != nil && err != io.EOF {
			return err
		}
		if len(strings.TrimSpace(string(line))) == 0 {
			continue
		}
		var req request
		if err := json.Unmarshal(line, &req); err != nil {
			return fmt.Errorf("bad request %q: %v", line, err)
		}
		res := response{ID: req.ID}
		switch req.Command {
		case "get":
			e, ok := entries[string(req.ActionID)]
			if !ok {
				res.Miss = true
				break
			}
			t := e.time
			res.OutputID, res.Size, res.Time = e.outputID, e.size, &t
			res.DiskPath = bodyPath(root, e.outputID)
		case "put":
			body, err := readBody(r, req.BodySize)
			if err != nil {
				return err
			}
			path := bodyPath(root, req.OutputID)
			if err := writeFile(path, body); err != nil {
				res.Err = err.Error()
				break
			}
			entries[string(req.ActionID)] = entry{outputID: req.OutputID, size: req.BodySize, time: time.Now()}
			dirty = true
			res.DiskPath = path
		case "close":
			if dirty {
				if err := saveIndex(filepath.Join(root, indexName), entries); err != nil {
					res.Err = err.Error()
				}
			}
			return send(&res)
		default:
			res.Err = fmt.Sprintf("unknown command %q", req.Command)
		}
		if err := send(&res); err != nil {
			return err
		}
	}
}

// readBody reads the body that follows a put request: the next line that is not blank (the go
// command ends the request with a blank line), a JSON string of base64.
func readBody(r *bufio.Reader, size int64) ([]byte, error) {
	if size == 0 {
		return nil, nil
	}
	var line []byte
	for len(bytes.TrimSpace(line)) == 0 {
		var err error
		line, err = r.ReadBytes('\n')
		if err != nil && (err != io.EOF || len(line) == 0) {
			return nil, fmt.Errorf("reading a put body: %v", err)
		}
	}
	var body []byte
	if err := json.Unmarshal(line, &body); err != nil {
		return nil, fmt.Errorf("bad put body: %v", err)
	}
	if int64(len(body)) != size {
		return nil, fmt.Errorf("put body has %d bytes, its request said %d", len(body), size)
	}
	return body, nil
}

func bodyPath(root string, outputID []byte) string {
	return filepath.Join(root, "o", hex.EncodeToString(outputID))
}

// writeFile writes a body unless a file of that output ID is there already (same ID, same bytes).
func writeFile(path string, body []byte) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	tmp := path + ".tmp" + strconv.Itoa(os.Getpid())
	if err := os.WriteFile(tmp, body, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// The index: one line per entry, "<actionID base64> <outputID base64> <size> <unix nanos>".
func loadIndex(path string) (map[string]entry, error) {
	entries := map[string]entry{}
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return entries, nil
	}
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) != 4 {
			continue
		}
		action, err1 := base64.StdEncoding.DecodeString(f[0])
		output, err2 := base64.StdEncoding.DecodeString(f[1])
		size, err3 := strconv.ParseInt(f[2], 10, 64)
		nanos, err4 := strconv.ParseInt(f[3], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil || err4 != nil {
			return nil, fmt.Errorf("bad line %q", line)
		}
		entries[string(action)] = entry{outputID: output, size: size, time: time.Unix(0, nanos)}
	}
	return entries, nil
}

func saveIndex(path string, entries map[string]entry) error {
	var b strings.Builder
	for action, e := range entries {
		fmt.Fprintf(&b, "%s %s %d %d\n", base64.StdEncoding.EncodeToString([]byte(action)),
			base64.StdEncoding.EncodeToString(e.outputID), e.size, e.time.UnixNano())
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
