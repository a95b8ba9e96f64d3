from stemweave.cli import main

raise SystemExit(main())
