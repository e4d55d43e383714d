from .ops.entry import main

main()
