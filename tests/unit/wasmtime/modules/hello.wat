;; WASI p1: `_start` prints "hello world", `foo` prints "foo called" (custom entrypoint).
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello world\n")
  (data (i32.const 32) "foo called\n")
  (func $print (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start") (call $print (i32.const 16) (i32.const 12)))
  (func (export "foo") (call $print (i32.const 32) (i32.const 11))))
